"""The local SLURM cluster as the tests see it (jobs, job-completion log) and the workflow run on it."""

from __future__ import annotations

import re
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from workflow_helpers import REPO, SMOKE_CONFIG, SNAKEFILE, SNAKEMAKE, run_snakemake

HERE = Path(__file__).resolve().parent
TEST_PROFILE = HERE / "profile"
FAULTS_CONFIG = HERE / "faults.yaml"
# The workflow on the cluster: the real profile, then the test layer (later profiles win per key).
PROFILE_ARGS = ("--profile", str(REPO / "profiles" / "slurm"), "--profile", str(TEST_PROFILE), "--verbose")
# A node announced bigger than this 2-core machine so profiles/slurm's requests (32 GB for training)
# are schedulable; 4 CPUs and 4 fake GPUs let 4 one-thread jobs run at once. Nothing is enforced.
NODE = {"ILM_SLURM_NODE_CPUS": "4", "ILM_SLURM_NODE_MEM_MB": "262144", "ILM_SLURM_FAKE_GPUS": "4"}
# Rules whose `resources:` ask for a GPU (gpu=1), read from the rule files.
def _gpu_rules() -> set[str]:
    """Rules whose resources ask for a GPU: `rule X:` blocks with gpu=1, and every `use rule X as Y` of one."""
    texts = [smk.read_text() for smk in (REPO / "workflow" / "rules").glob("*.smk")]
    rules = {
        block.split(":", 1)[0].strip()
        for text in texts
        for block in re.split(r"^rule ", text, flags=re.M)[1:]
        if re.search(r"^\s+gpu=1,", block, flags=re.M)
    }
    derived = [m.groups() for text in texts for m in re.finditer(r"^use rule (\w+) as (\w+)", text, flags=re.M)]
    while True:  # a derived rule may itself be derived from (attack_gcg_shard -> attack_uniform_shard -> study_...)
        more = {new for old, new in derived if old in rules} - rules
        if not more:
            return rules
        rules |= more


GPU_RULES = _gpu_rules()
# Rules the Snakefile declares `localrules`: they run beside Snakemake, never through sbatch.
LOCAL_RULES = set(
    re.search(r"^localrules:\n((?:    \w+,\n)+)", SNAKEFILE.read_text(), flags=re.M).group(1).replace(",", "").split()
)


@dataclass(frozen=True)
class SlurmJob:
    """One SLURM job as slurmctld remembers it (MinJobAge keeps finished jobs for an hour)."""

    id: int
    rule: str  # from the plugin's --comment rule_<name>[_wildcards_<values>]
    comment: str
    state: str
    time_limit: str  # D-HH:MM:SS or HH:MM:SS
    tres_per_job: str  # gres:gpu:1 for --gpus=1, "" otherwise
    workdir: str


@dataclass
class SlurmCluster:
    env: dict[str, str]  # what a Snakemake process needs to reach the cluster
    jobcomp: Path  # one line per finished job, written by slurmctld

    def jobs(self, workdir: Path) -> list[SlurmJob]:
        """The jobs submitted from `workdir`, oldest first."""
        out = subprocess.run(
            ["scontrol", "show", "job", "-o"], env=self.env, capture_output=True, text=True, check=True
        ).stdout
        jobs = []
        for line in out.splitlines():
            fields = dict(re.findall(r"(\w+)=(\S*)", line))
            if "JobId" not in fields or fields.get("WorkDir") != str(workdir):
                continue
            comment = fields.get("Comment", "")
            jobs.append(
                SlurmJob(
                    id=int(fields["JobId"]),
                    rule=re.sub(r"^rule_(\w+?)(_wildcards_.*)?$", r"\1", comment),
                    comment=comment,
                    state=fields["JobState"],
                    time_limit=fields["TimeLimit"],
                    tres_per_job=fields.get("TresPerJob", ""),
                    workdir=fields["WorkDir"],
                )
            )
        return sorted(jobs, key=lambda job: job.id)

    def completed_job_ids(self, workdir: Path) -> set[int]:
        """Jobs of `workdir` that slurmctld wrote to its job-completion log."""
        ids = set()
        for line in self.jobcomp.read_text().splitlines():
            fields = dict(re.findall(r"(\w+)=(\S*)", line))
            if fields.get("WorkDir") == str(workdir):
                ids.add(int(fields["JobId"]))
        return ids

    def scancel(self, job_id: int) -> None:
        subprocess.run(["scancel", str(job_id)], env=self.env, check=True)


def run_on_slurm(
    cluster: SlurmCluster,
    workdir: Path,
    *args: str,
    configfiles=(SMOKE_CONFIG,),
    env: Optional[dict] = None,
    check: bool = True,
) -> subprocess.CompletedProcess:
    """`snakemake --profile profiles/slurm --profile tests/slurm/profile --verbose ...` in `workdir`."""
    return run_snakemake(
        workdir, *PROFILE_ARGS, *args, configfiles=configfiles, env={**cluster.env, **(env or {})}, check=check
    )


def start_on_slurm(
    cluster: SlurmCluster, workdir: Path, *args: str, configfiles=(SMOKE_CONFIG,), env: Optional[dict] = None
) -> subprocess.Popen:
    """Like run_on_slurm, in the background; output goes to workdir/snakemake.log."""
    workdir.mkdir(parents=True, exist_ok=True)
    cmd = [SNAKEMAKE, "-s", str(SNAKEFILE), "-d", str(workdir), "--configfile", *map(str, configfiles)]
    log = open(workdir / "snakemake.log", "w")
    return subprocess.Popen(
        [*cmd, *PROFILE_ARGS, *args], cwd=REPO, env={**cluster.env, **(env or {})}, stdout=log, stderr=subprocess.STDOUT
    )


def wait_for(condition, timeout: float, what: str, interval: float = 0.5):
    """Poll `condition()` until it returns something truthy; fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def sbatch_calls(snakemake_log: str) -> dict[str, list[str]]:
    """The plugin's `sbatch call:` lines (with --verbose), by --comment, without the wrapped command."""
    calls: dict[str, list[str]] = {}
    for line in snakemake_log.splitlines():
        if line.startswith("sbatch call: "):
            call = line[len("sbatch call: ") :].split(" --wrap=")[0]
            comment = re.search(r"--comment (\S+)", call).group(1)
            calls.setdefault(comment, []).append(call)
    return calls
