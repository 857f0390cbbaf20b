"""Software deployment for `--sdm conda`: the env file the rules use, and its agreement with pyproject.toml.

envs/ilm.yaml pins one version of every dependency. Snakemake copies an env file before it
creates the environment, so a relative path to this repository cannot live in it:
`conda_env_file` writes the file the rules really use, adding the repository's absolute path and
the torch build (CPU by default), named by its content so a change makes a new environment.
`check_env` verifies that the pins and pyproject.toml agree.
"""

from __future__ import annotations

import os
import tomllib
from pathlib import Path

import yaml
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from ilm.io import write_named_by_content

# torch from PyTorch's CPU wheel index: a PyPI torch pulls gigabytes of CUDA on a CPU node.
CPU_TORCH = ("--extra-index-url https://download.pytorch.org/whl/cpu", "torch==2.13.0+cpu")
TORCH_ENV = "ILM_TORCH"  # e.g. "torch==2.13.0" for PyPI's CUDA build


def _pip_section(env: dict) -> list[str]:
    for item in env.get("dependencies", []):
        if isinstance(item, dict) and "pip" in item:
            return item["pip"]
    raise ValueError("the env file has no pip section")


def conda_env_file(template: Path, repo: Path, out_dir: Path) -> Path:
    """Write the env file the rules use: the pinned template, the torch build and `-e <repo>` (absolute)."""
    env = yaml.safe_load(Path(template).read_text())
    pip = _pip_section(env)
    torch = os.environ.get(TORCH_ENV)
    pip[:0] = [torch] if torch else list(CPU_TORCH)
    pip.append(f"-e {Path(repo).resolve()}")
    # Absolute: Snakemake resolves a relative `conda:` path against the rule file's folder.
    return write_named_by_content(Path(out_dir).resolve(), "ilm", ".yaml", yaml.safe_dump(env, sort_keys=False))


def check_env(pyproject: Path, env_file: Path) -> list[str]:
    """Problems between pyproject.toml's dependencies and the env file's pins (empty when they agree).

    Every dependency but torch (added by conda_env_file) must be pinned with `==`, to a version
    inside its pyproject range, and nothing else may be pinned.
    """
    project = tomllib.loads(Path(pyproject).read_text())["project"]
    wanted = {canonicalize_name(r.name): r for r in map(Requirement, project["dependencies"])}
    pins: dict[str, Requirement] = {}
    problems = []
    for line in _pip_section(yaml.safe_load(Path(env_file).read_text())):
        if line.startswith("-"):
            problems.append(f"{env_file}: pip option {line!r} belongs in the generated file, not the template")
            continue
        requirement = Requirement(line)
        pins[canonicalize_name(requirement.name)] = requirement
    for name, requirement in sorted(wanted.items()):
        if name == "torch":
            continue
        pin = pins.get(name)
        if pin is None:
            problems.append(f"{requirement.name} ({requirement.specifier}) is in pyproject.toml but not pinned")
            continue
        versions = [s.version for s in pin.specifier if s.operator == "=="]
        if len(versions) != 1 or len(pin.specifier) != 1:
            problems.append(f"{line_of(pin)} is not an exact pin (==)")
        elif not requirement.specifier.contains(versions[0], prereleases=True):
            problems.append(f"{line_of(pin)} is outside pyproject.toml's range {requirement.specifier}")
    for name in sorted(set(pins) - set(wanted)):
        problems.append(f"{line_of(pins[name])} is pinned but not a dependency in pyproject.toml")
    if "torch" in pins:
        problems.append("torch is pinned in the template; conda_env_file adds the build (CPU unless ILM_TORCH)")
    return problems


def line_of(requirement: Requirement) -> str:
    return f"{requirement.name}{requirement.specifier}"

