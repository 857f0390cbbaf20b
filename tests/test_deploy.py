"""Deployment: envs/ilm.yaml pins every dependency inside pyproject.toml's range, the env file the rules use,
and the Apptainer definition read the way Apptainer reads it."""

from __future__ import annotations

import re
import shlex
from pathlib import Path
from urllib.parse import urlparse

import pytest
import yaml
from packaging.requirements import InvalidRequirement, Requirement

from ilm.cli import main
from ilm.deploy import CPU_TORCH, TORCH_ENV, check_env, conda_env_file

REPO = Path(__file__).resolve().parents[1]


def test_env_file_agrees_with_pyproject(capsys):
    """The shipped envs/ilm.yaml pins each pyproject dependency (but torch) exactly, inside its range."""
    assert check_env(REPO / "pyproject.toml", REPO / "envs" / "ilm.yaml") == []
    assert main(["check-env", "--pyproject", str(REPO / "pyproject.toml"), "--env", str(REPO / "envs/ilm.yaml")]) == 0
    assert "pins every dependency" in capsys.readouterr().out


def _env(tmp_path: Path, pins: list[str]) -> Path:
    path = tmp_path / "env.yaml"
    path.write_text(yaml.safe_dump({"dependencies": ["python =3.11", "pip", {"pip": pins}]}))
    return path


def _pyproject(tmp_path: Path, deps: list[str]) -> Path:
    path = tmp_path / "pyproject.toml"
    path.write_text("[project]\nname = 'x'\ndependencies = [" + ", ".join(f'"{d}"' for d in deps) + "]\n")
    return path


def test_check_env_names_every_disagreement(tmp_path, capsys):
    """Missing, out-of-range, inexact and extra pins, and a pinned torch, are each reported."""
    pyproject = _pyproject(tmp_path, ["torch>=2.4,<3", "numpy>=1.26,<3", "pandas>=2.1,<4", "tqdm>=4.66,<5", "pyyaml>=6"])
    env = _env(tmp_path, ["numpy==3.0.0", "pandas>=2.1", "tqdm==4.70.1", "rich==13.0", "torch==2.13.0"])
    problems = check_env(pyproject, env)
    assert problems == [
        "numpy==3.0.0 is outside pyproject.toml's range <3,>=1.26",
        "pandas>=2.1 is not an exact pin (==)",
        "pyyaml (>=6) is in pyproject.toml but not pinned",
        "rich==13.0 is pinned but not a dependency in pyproject.toml",
        "torch is pinned in the template; conda_env_file adds the build (CPU unless ILM_TORCH)",
    ]
    assert main(["check-env", "--pyproject", str(pyproject), "--env", str(env)]) == 1
    assert "numpy==3.0.0 is outside" in capsys.readouterr().err


def test_generated_env_installs_this_checkout_and_cpu_torch(tmp_path, monkeypatch):
    """The env file the rules use adds CPU torch (or ILM_TORCH) and `-e <absolute repo>`; its name is its hash."""
    monkeypatch.delenv(TORCH_ENV, raising=False)
    path = conda_env_file(REPO / "envs" / "ilm.yaml", REPO, tmp_path)
    pip = next(d["pip"] for d in yaml.safe_load(path.read_text())["dependencies"] if isinstance(d, dict))
    assert pip[:2] == list(CPU_TORCH) and pip[-1] == f"-e {REPO}"
    assert Path(pip[-1][3:]).is_absolute()
    assert conda_env_file(REPO / "envs" / "ilm.yaml", REPO, tmp_path) == path  # same content, same file
    monkeypatch.setenv(TORCH_ENV, "torch==2.13.0")
    cuda = conda_env_file(REPO / "envs" / "ilm.yaml", REPO, tmp_path)
    assert cuda != path and "torch==2.13.0" in cuda.read_text() and "whl/cpu" not in cuda.read_text()


APPTAINER_DEF = REPO / "envs" / "Apptainer.def"
BUILD_ARG = re.compile(r"{{\s*(\w+)\s*}}")  # Apptainer's own pattern (internal/pkg/build/args/reader.go)
PIP_OPTIONS_WITH_VALUE = {"-i", "--index-url", "--extra-index-url", "-r", "--requirement", "-c", "--constraint"}


def _sections(definition: str) -> dict[str, list[str]]:
    """The lines of each `%section` of a definition file ('' holds the header and its comments)."""
    sections: dict[str, list[str]] = {"": []}
    name = ""
    for line in definition.splitlines():
        match = re.match(r"^%(\w+)", line)
        if match:
            name = match.group(1)
            sections.setdefault(name, [])
        else:
            sections[name].append(line)
    return sections


def _apptainer_defaults(definition: str) -> dict[str, str]:
    """%arguments as Apptainer reads it (args.ReadDefaults): NAME=value, both trimmed of spaces only, quotes kept."""
    defaults = {}
    for line in _sections(definition).get("arguments", []):
        text = line.strip()
        if not text or text.startswith("#"):
            continue
        assert "=" in text, f"Apptainer skips {text!r}: not a key=value pair"
        key, value = text.split("=", 1)
        defaults[key.strip()] = value.strip()
    return defaults


def _pip_installs(definition: str, build_args: dict[str, str]) -> list[list[str]]:
    """The words of each `pip install` in %post once Apptainer has pasted in the arguments and sh has split it."""
    defaults = _apptainer_defaults(definition)

    def value(match: re.Match) -> str:
        name = match.group(1)
        assert name in build_args or name in defaults, f"build var {name} has no default and no --build-arg"
        return build_args.get(name, defaults.get(name))

    post = BUILD_ARG.sub(value, "\n".join(_sections(definition)["post"]))
    return [shlex.split(line)[2:] for line in post.splitlines() if line.strip().startswith("pip install")]


def _requirements(words: list[str]) -> tuple[list[str], list[str]]:
    """(requirements, index URLs) of one `pip install`'s words; local paths (/opt/ilm) are neither."""
    requirements, indexes = [], []
    words = iter(words)
    for word in words:
        if word in PIP_OPTIONS_WITH_VALUE:
            option_value = next(words)
            if "index-url" in word or word == "-i":
                indexes.append(option_value)
        elif not word.startswith(("-", "/", ".")):
            requirements.append(word)
    return requirements, indexes


def _check_installs(installs: list[list[str]]) -> list[Requirement]:
    """Every requirement parses (PEP 508) and every index is an https URL; returns the requirements."""
    parsed = []
    for words in installs:
        requirements, indexes = _requirements(words)
        for text in requirements:
            try:
                parsed.append(Requirement(text))
            except InvalidRequirement as err:
                pytest.fail(f"pip install {' '.join(map(shlex.quote, words))}: {text!r} is no requirement ({err})")
        for url in indexes:
            parts = urlparse(url)
            assert parts.scheme == "https" and parts.netloc and " " not in url, f"index {url!r} is no https URL"
    return parsed


def test_apptainer_default_build_installs_valid_requirements():
    """Parsed as Apptainer does, the default %arguments give pip valid requirements: CPU torch from PyTorch's index."""
    definition = APPTAINER_DEF.read_text()
    defaults = _apptainer_defaults(definition)
    requirements = _check_installs(_pip_installs(definition, {}))
    for name, value in defaults.items():
        assert not any(c in value for c in "\"' "), f"{name}={value}: Apptainer keeps quotes and pastes the value as is"
    torch = [r for r in requirements if r.name == "torch"]
    assert [str(r) for r in torch] == [CPU_TORCH[1]]  # the same pin as the conda env's CPU build
    assert f"--extra-index-url {defaults['TORCH_INDEX']}" == CPU_TORCH[0]
    assert any(str(r) == "pyyaml" for r in requirements)


def test_apptainer_documented_cuda_build_installs_valid_requirements():
    """The --build-arg line the definition's comment gives for PyPI's CUDA build yields torch==2.13.0 from PyPI."""
    definition = APPTAINER_DEF.read_text()
    comments = " ".join(line.lstrip("# ") for line in _sections(definition)[""] if line.startswith("#"))
    words = shlex.split(comments[comments.index("--build-arg"):].split(" and ")[0])
    build_args = dict(w.split("=", 1) for w in words if w != "--build-arg")
    assert set(build_args) <= set(_apptainer_defaults(definition))
    installs = _pip_installs(definition, build_args)
    assert [str(r) for r in _check_installs(installs) if r.name == "torch"] == ["torch==2.13.0"]
    assert "https://pypi.org/simple" in _requirements(installs[0])[1]


def test_container_definition_installs_the_pins():
    """The image installs envs/ilm.yaml's pins and this package, and the Snakefile's container: names the image."""
    post = "\n".join(_sections(APPTAINER_DEF.read_text())["post"])
    assert "/opt/ilm/envs/ilm.yaml" in post and "pip install --no-cache-dir -r /tmp/pins.txt" in post
    assert "pip install --no-cache-dir --no-deps /opt/ilm" in post
    assert 'container: os.path.join(workflow.basedir, "envs", "ilm.sif")' in (REPO / "Snakefile").read_text()


RULE_FILES = sorted(p for p in (REPO / "workflow" / "rules").glob("*.smk") if p.name != "common.smk")


@pytest.mark.parametrize("rule_file", RULE_FILES, ids=[p.name for p in RULE_FILES])
def test_every_rule_uses_the_generated_env(rule_file):
    """No rule names envs/ilm.yaml itself (Snakemake's copy would break its paths): all use CONDA_ENV."""
    text = rule_file.read_text()
    assert "envs/ilm.yaml" not in text
    assert len(re.findall(r"^\s*rule \w+:", text, flags=re.M)) == text.count("CONDA_ENV")
