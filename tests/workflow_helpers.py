"""Run the real Snakefile in a scratch working directory, as a user would (no mocking)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Mapping, Optional, Sequence

REPO = Path(__file__).resolve().parents[1]
SNAKEFILE = REPO / "Snakefile"
SMOKE_CONFIG = REPO / "tests" / "smoke.yaml"
SNAKEMAKE = str(Path(sys.executable).parent / "snakemake")


def run_snakemake(
    workdir: Path,
    *args: str,
    configfiles: Sequence[Path] = (SMOKE_CONFIG,),
    env: Optional[Mapping[str, str]] = None,
    check: bool = True,
    timeout: int = 1800,
) -> subprocess.CompletedProcess:
    """`snakemake -s Snakefile -d workdir --configfile ... args`, run from the repository root.

    Output goes to workdir/snakemake.log (returned as .stdout too) so a failure shows the job logs.
    """
    workdir.mkdir(parents=True, exist_ok=True)
    cmd = [SNAKEMAKE, "-s", str(SNAKEFILE), "-d", str(workdir)]
    if configfiles:
        cmd += ["--configfile", *map(str, configfiles)]
    cmd += list(args)
    full_env = {**os.environ, **(env or {})}
    proc = subprocess.run(
        cmd, cwd=REPO, env=full_env, capture_output=True, text=True, timeout=timeout
    )
    (workdir / "snakemake.log").write_text(proc.stdout + proc.stderr)
    if check and proc.returncode != 0:
        raise AssertionError(
            f"snakemake failed ({proc.returncode}): {' '.join(cmd)}\n{proc.stdout[-6000:]}\n{proc.stderr[-6000:]}"
        )
    return proc


def run_locally(workdir: Path, *targets: str, configfiles: Sequence[Path] = (SMOKE_CONFIG,)) -> Path:
    """A local run on 2 cores with one thread a job, as the SLURM test layer gives each job (same floats)."""
    run_snakemake(workdir, "--cores", "2", "--max-threads", "1", *targets, configfiles=configfiles)
    return workdir


def read_tables(workdir: Path) -> dict[str, str]:
    """Every table and the sweep files of a finished run, by relative path."""
    out = {}
    for path in sorted((workdir / "results" / "tables").glob("*")):
        out[str(path.relative_to(workdir))] = path.read_text()
    return out


# Rules whose output is a folder (`directory()`): a fabricated run makes them as empty folders.
FOLDER_RULES = ("fetch_judges", "download_pilot_encoder", "download_pilot_data", "download_data")


def fabricate_run(workdir: Path, configfiles: Sequence[Path] = (SMOKE_CONFIG,)) -> Path:
    """A finished run in seconds, for dry-run tests: every planned output as an empty file, then `--touch`.

    `--touch` records Snakemake's metadata (params included) as a real run would, so a later dry run
    plans exactly what a changed setting or a deleted file makes stale.
    """
    summary = run_snakemake(workdir, "--summary", configfiles=configfiles).stdout
    for line in summary.splitlines():
        fields = line.split("\t")
        if len(fields) < 3 or fields[0] == "output_file":
            continue
        path = workdir / fields[0]
        if fields[2] in FOLDER_RULES:
            path.mkdir(parents=True, exist_ok=True)
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.touch()
    run_snakemake(workdir, "--touch", "--cores", "1", configfiles=configfiles)
    return workdir
