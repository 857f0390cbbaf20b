"""A real single-node SLURM cluster for the tests in this folder.

`slurm_cluster` starts slurmctld, slurmd and munged once per test session (tests/slurm/up.sh,
installing Debian's packages when missing) and always stops them (down.sh), also when a test
fails. Where the cluster cannot start (not root, no apt-get, ...), every test here is skipped
with the reason; ILM_REQUIRE_SLURM=1 (CI) turns that skip into a failure.
"""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest

from slurm_helpers import HERE, NODE, SlurmCluster


def _skip_or_fail(reason: str) -> None:
    if os.environ.get("ILM_REQUIRE_SLURM") == "1":
        pytest.fail(f"ILM_REQUIRE_SLURM=1 but {reason}")
    pytest.skip(reason)


@pytest.fixture(scope="session")
def slurm_cluster():
    """A running single-node cluster (partition `debug`, 4 fake GPUs); stopped at the end of the session."""
    if os.name != "posix" or os.geteuid() != 0:
        _skip_or_fail("the local SLURM cluster needs root (tests/slurm/up.sh starts slurmd and munged)")
    env = {**os.environ, **NODE, "PATH": os.environ.get("PATH", "") + ":/usr/sbin:/sbin"}
    down = ["bash", str(HERE / "down.sh")]
    try:
        up = subprocess.run(["bash", str(HERE / "up.sh")], env=env, capture_output=True, text=True, timeout=600)
    except subprocess.TimeoutExpired:
        subprocess.run(down, env=env, capture_output=True)
        _skip_or_fail("tests/slurm/up.sh took over 10 minutes")
    if up.returncode != 0:
        if up.returncode != 77:  # 77: refused before starting anything
            subprocess.run(down, env=env, capture_output=True)
        # up.sh ends stderr with a one-line reason; the lines before it (logs) give its context.
        why = " | ".join(up.stderr.strip().splitlines()[-4:]) or f"exit status {up.returncode}"
        _skip_or_fail(f"no local SLURM cluster: {why}")
    info = dict(line.split("=", 1) for line in up.stdout.splitlines() if re.match(r"^[A-Z_]+=", line))
    try:
        env.update(SLURM_CONF=info["SLURM_CONF"], ILM_SLURM_PARTITION=info["ILM_SLURM_PARTITION"])
        yield SlurmCluster(env=env, jobcomp=Path(info["ILM_SLURM_JOBCOMP"]))
    finally:
        subprocess.run(down, env=env, capture_output=True)
