"""Deployment: envs/ilm.yaml pins every dependency inside pyproject.toml's range, and the env file the rules use."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

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


def test_container_definition_installs_the_pins():
    """The Apptainer definition the Snakefile's container: directive points at installs envs/ilm.yaml's pins."""
    definition = (REPO / "envs" / "Apptainer.def").read_text()
    assert "envs/ilm.yaml" in definition and "pip install --no-cache-dir --no-deps /opt/ilm" in definition
    assert 'container: os.path.join(workflow.basedir, "envs", "ilm.sif")' in (REPO / "Snakefile").read_text()


RULE_FILES = sorted(p for p in (REPO / "workflow" / "rules").glob("*.smk") if p.name != "common.smk")


@pytest.mark.parametrize("rule_file", RULE_FILES, ids=[p.name for p in RULE_FILES])
def test_every_rule_uses_the_generated_env(rule_file):
    """No rule names envs/ilm.yaml itself (Snakemake's copy would break its paths): all use CONDA_ENV."""
    text = rule_file.read_text()
    assert "envs/ilm.yaml" not in text
    assert len(re.findall(r"^\s*rule \w+:", text, flags=re.M)) == text.count("CONDA_ENV")
