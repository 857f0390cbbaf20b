"""Studies: named grids of settings, each point run by the same rules as the main run (docs/method.md §11.3).

`studies.grids.<name>.settings` maps dotted keys to the values to sweep; the grid is their
product. A point is the main config with one value per key; its results live under
results/studies/<name>/<point>/ unless its config is the main run's, whose results it reuses.
No torch here: the Snakefile imports this module to plan the jobs.
"""

from __future__ import annotations

import copy
import itertools
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from ilm.config import RUNTIME_KEYS, load_schema, shaping_config, validate_config

SWEEPABLE_SECTIONS = ("model", "objective", "train", "evaluate", "gcg")
DEFAULT_VARIANTS = ("identity", "bert_like", "inv_first")
_POINT_NAME = re.compile(r"^[A-Za-z0-9_.=+-]+$")


@dataclass(frozen=True)
class Point:
    """One point of a study: its folder name and the settings it changes."""

    name: str  # e.g. "grad_scale_tokens=256"; several keys are joined by "__"
    overrides: dict[str, Any]  # dotted key -> value, in the grid's key order


@dataclass(frozen=True)
class Study:
    name: str
    description: str
    variants: tuple[str, ...]
    settings: dict[str, list]  # dotted key -> swept values, in the config's order
    points: tuple[Point, ...]


def format_value(value: Any) -> str:
    """A swept value as it appears in a point's name: true/false, 65536, 0.0001, pad_frozen."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and value.is_integer() and abs(value) < 1e15:
        return str(int(value))
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def _point(settings: Mapping[str, list], values: tuple) -> Point:
    overrides = dict(zip(settings, values))
    name = "__".join(f"{key.split('.', 1)[1]}={format_value(v)}" for key, v in overrides.items())
    return Point(name=name, overrides=overrides)


def apply_overrides(config: Mapping, overrides: Mapping[str, Any]) -> dict:
    """A copy of `config` with each dotted key set, and no studies (a point runs no studies itself)."""
    out = copy.deepcopy(dict(config))
    out["studies"] = {"run": [], "grids": {}}  # present and empty: no default grids to recurse into
    for dotted, value in overrides.items():
        section, key = dotted.split(".", 1)
        out[section] = {**out.get(section, {}), key: copy.deepcopy(value)}
    return out


def point_config(config: Mapping, study: str, point: Point) -> dict:
    """The validated config of one point; a bad value is reported with the study and point that set it."""
    try:
        return validate_config(apply_overrides(config, point.overrides))
    except ValueError as e:
        raise ValueError(f"study {study!r}, point {point.name!r}: {e}") from None


def _check_keys(name: str, settings: Mapping[str, list]) -> None:
    properties = load_schema()["properties"]
    for dotted in settings:
        section, _, key = dotted.partition(".")
        if section not in SWEEPABLE_SECTIONS or key not in properties[section]["properties"]:
            raise ValueError(
                f"studies.grids.{name}.settings: {dotted!r} is not a setting a study can sweep; "
                f"use a key of {', '.join(SWEEPABLE_SECTIONS)} (data and corpus are shared by every point)"
            )
        if dotted in RUNTIME_KEYS:
            raise ValueError(
                f"studies.grids.{name}.settings: {dotted!r} is a run-time setting (device, batch size, logging), "
                "which changes no result; sweep a setting that does"
            )


def study(config: Mapping, name: str) -> Study:
    """The declared study `name`, its points checked (each point's config validates)."""
    grids = config.get("studies", {}).get("grids", {})
    if name not in grids:
        declared = ", ".join(grids) or "none"
        raise ValueError(f"no study {name!r} in studies.grids (declared: {declared})")
    entry = grids[name]
    settings = {key: list(values) for key, values in entry["settings"].items()}
    _check_keys(name, settings)
    points = tuple(_point(settings, values) for values in itertools.product(*settings.values()))
    names = [p.name for p in points]
    bad = [n for n in names if not _POINT_NAME.match(n)]
    if bad or len(set(names)) != len(names):
        raise ValueError(
            f"studies.grids.{name}: the points {bad or names} do not make distinct folder names; "
            "use plain numbers, booleans or names as values"
        )
    result = Study(
        name=name,
        description=entry.get("description", ""),
        variants=tuple(entry.get("variants", DEFAULT_VARIANTS)),
        settings=settings,
        points=points,
    )
    for point in points:
        point_config(config, name, point)
    return result


def check_studies(config: Mapping) -> None:
    """Every declared study and every point of it is valid; studies.run names declared studies."""
    grids = config.get("studies", {}).get("grids", {})
    unknown = [n for n in config.get("studies", {}).get("run", []) if n not in grids]
    if unknown:
        raise ValueError(f"studies.run names undeclared studies {unknown}; declared: {', '.join(grids) or 'none'}")
    for name in grids:
        study(config, name)
    check_seed_study(config)


def check_seed_study(config: Mapping) -> None:
    """claims.seed_study, when set, names a declared study that sweeps train.seed alone over every variant."""
    name = config.get("claims", {}).get("seed_study")
    if name is None:
        return
    grids = config.get("studies", {}).get("grids", {})
    if name not in grids:
        raise ValueError(f"claims.seed_study names {name!r}, which is not in studies.grids (declared: "
                         f"{', '.join(grids) or 'none'}); declare it or set claims.seed_study: null")
    s = study(config, name)
    if list(s.settings) != ["train.seed"] or len(s.points) < 2:
        raise ValueError(f"claims.seed_study {name!r} must sweep train.seed alone over at least 2 seeds "
                         f"(it sweeps {', '.join(s.settings)} over {len(s.points)} point(s))")
    if "base" not in s.variants:
        raise ValueError(f"claims.seed_study {name!r} must train the Baseline (every claim compares with it); "
                         "add base to its variants")
    if not any(reuses_main_run(config, name, p) for p in s.points):
        raise ValueError(f"claims.seed_study {name!r} must include the main run's train.seed "
                         f"({config['train']['seed']}) so its first replicate is the main run")


def _comparable(config: Mapping) -> str:
    """What a run's results depend on: no studies, no run-time settings, 65536.0 written as 65536."""
    return json.dumps(shaping_config(config), sort_keys=True)


def reuses_main_run(config: Mapping, study_name: str, point: Point) -> bool:
    """Whether a point's config equals the main run's, so the main results serve it."""
    return _comparable(point_config(config, study_name, point)) == _comparable(validate_config(config))


def point_root(config: Mapping, study_name: str, point: Point, results: str = "results") -> str:
    """Where a point's models and metrics live: results/ for the main run's config, else its own folder."""
    if reuses_main_run(config, study_name, point):
        return results
    return f"{results}/studies/{study_name}/{point.name}"


def manifest(config: Mapping, name: str, results: str = "results") -> dict:
    """What the study summary reads: the swept settings, and per point and variant its metric files."""
    s = study(config, name)
    points = []
    for point in s.points:
        root = point_root(config, name, point, results)
        points.append(
            {
                "name": point.name,
                "overrides": point.overrides,
                "root": root,
                "files": {
                    variant: {
                        "forward": f"{root}/metrics/{variant}/forward.json",
                        "inverse": f"{root}/metrics/{variant}/inverse.json",
                        "gcg": f"{root}/metrics/{variant}/gcg.csv",
                        "windows": f"{root}/metrics/{variant}/eval_windows.csv",
                    }
                    for variant in s.variants
                },
            }
        )
    return {"study": name, "description": s.description, "variants": list(s.variants),
            "settings": s.settings, "points": points, "stories": f"{results}/data/test_stories.npy"}


def manifest_files(m: Mapping) -> list[str]:
    """Every file a manifest names, in order: each point's metric files, then the test windows' stories."""
    files = [path for point in m["points"] for files in point["files"].values() for path in files.values()]
    return [*files, m["stories"]]


def read_manifest(path: Path | str) -> dict:
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"study manifest {path} does not exist; Snakemake writes it when it plans the study")
    return json.loads(path.read_text())
