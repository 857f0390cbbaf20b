"""Fault injection for the tests: simulated kills and slowed-down jobs, read from the environment.

The whole-workflow and SLURM tests must kill a job at a known point, or make a smoke-scale
job last long enough to be cancelled, without mocking. Each hook is one environment
variable; all are unset in normal runs and then cost nothing.
"""

from __future__ import annotations

import os
from typing import Optional

# Exit status of a simulated kill (distinct from 1, a crash, and 2, bad input).
KILLED_EXIT_CODE = 3

TRAIN_STOP_AFTER_STEPS = "ILM_STOP_AFTER_STEPS"  # `ilm train` exits after the checkpoint of this step
TRAIN_STEP_SLEEP = "ILM_TRAIN_STEP_SLEEP"  # seconds `ilm train` idles before each step
GCG_STOP_AFTER_BATCHES = "ILM_GCG_STOP_AFTER_BATCHES"  # `ilm gcg-attack` exits after this many batches


def _positive_int(name: str) -> Optional[int]:
    text = os.environ.get(name)
    if not text:
        return None
    if not text.isdigit() or int(text) < 1:
        raise ValueError(f"environment variable {name} must be a positive integer, got {text!r}")
    return int(text)


def train_stop_after_steps() -> Optional[int]:
    """The step after whose checkpoint training simulates a kill, or None."""
    return _positive_int(TRAIN_STOP_AFTER_STEPS)


def train_step_sleep() -> float:
    """Seconds to idle before each training step (0 when unset)."""
    text = os.environ.get(TRAIN_STEP_SLEEP)
    if not text:
        return 0.0
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"environment variable {TRAIN_STEP_SLEEP} must be a number of seconds, got {text!r}") from None
    if not value >= 0:
        raise ValueError(f"environment variable {TRAIN_STEP_SLEEP} must be >= 0, got {text!r}")
    return value


def gcg_stop_after_batches() -> Optional[int]:
    """The number of appended batches after which a GCG shard simulates a kill, or None."""
    return _positive_int(GCG_STOP_AFTER_BATCHES)


def simulate_kill() -> None:
    """Leave the process as a kill would, after the caller has saved its resume state."""
    raise SystemExit(KILLED_EXIT_CODE)
