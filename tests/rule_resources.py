"""What each rule of the workflow declares it needs, as Snakemake itself parses the rule files.

Run as a script (`python tests/rule_resources.py WORKDIR [CONFIGFILE ...]`), it loads the Snakefile
through Snakemake's API without building a DAG and prints, for every rule, its `threads:` and the
numbers of its `resources:` as JSON. A separate process: loading a workflow changes the working
directory and Snakemake's logging, which a test process should not inherit.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Sequence

REPO = Path(__file__).resolve().parents[1]
NUMBERS = ("gpu", "mem_mb", "runtime", "cpus_per_task", "threads")


def _declared(workdir: Path, configfiles: Sequence[Path]) -> dict[str, dict]:
    from snakemake.api import SnakemakeApi
    from snakemake.settings.types import ConfigSettings, OutputSettings, ResourceSettings, StorageSettings

    rules = {}
    with SnakemakeApi(OutputSettings(quiet={"all"})) as api:
        workflow = api.workflow(
            resource_settings=ResourceSettings(),
            config_settings=ConfigSettings(configfiles=list(configfiles)),
            storage_settings=StorageSettings(),
            snakefile=REPO / "Snakefile",
            workdir=workdir,
        )._workflow  # the parsed rules; the public API only runs them
        for rule in workflow.rules:
            numbers = {}
            for name, resource in rule.resources.items():
                key = "threads" if name == "_cores" else name
                if key in NUMBERS:
                    numbers[key] = "callable" if resource.is_evaluable() else resource.value
            local = rule.name in workflow._localrules or rule.norun
            rules[rule.name] = {"local": local, "resources": numbers}
    return rules


def declared_resources(workdir: Path, configfiles: Sequence[Path]) -> dict[str, dict]:
    """{rule: {"local": bool, "resources": {"gpu"|"mem_mb"|"runtime"|"threads": value}}} for every rule."""
    proc = subprocess.run(
        [sys.executable, __file__, str(workdir), *map(str, configfiles)],
        cwd=REPO, capture_output=True, text=True, check=False, timeout=300,
    )
    if proc.returncode != 0:
        raise AssertionError(f"loading the workflow failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.splitlines()[-1])


if __name__ == "__main__":
    print(json.dumps(_declared(Path(sys.argv[1]), [Path(p) for p in sys.argv[2:]])))
