"""One fixed-format progress line for every long stage: done/total, rate and ETA, logged every 30 s.

Line-based on purpose: jobs write to log files, where tqdm's carriage-return frames pile up
unreadably. Each stage passes its own logger, so the line carries the stage's logger name:

    train base | step 0420/6700 (6.3%) | loss 2.31 | tok/s 1.2M | 3.11 step/s | elapsed 0:02:15 | ETA 0:33:39
"""

from __future__ import annotations

import logging
import time
from typing import Callable, Mapping, Optional, Union

# Logging cadence only, never a setting of any stage: changing it must rerun nothing.
PROGRESS_EVERY_S = 30.0
# The attribute a progress line's log record carries: `ilm --log` sends these records to the terminal too.
PROGRESS_RECORD = "ilm_progress"

Field = Union[str, int, float]


def human(x: float) -> str:
    """3 significant digits with a k/M/G suffix: 1234567 -> '1.23M', 0.0123 -> '0.0123'."""
    for scale, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(x) >= scale:
            return f"{x / scale:.3g}{suffix}"
    return f"{x:.3g}"


def clock_text(seconds: float) -> str:
    """H:MM:SS of a non-negative duration."""
    s = int(round(seconds))
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}"


def _field(value: Field) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


class Progress:
    """Counts units of work towards `total` and logs a progress line when `every_s` seconds have passed.

    The rate is taken over this process's work only (a resumed run's `done` units are not in it), and
    the ETA is the remaining units over that rate. `close()` (or leaving a `with` block without an
    error) logs the last line.
    """

    def __init__(
        self,
        total: int,
        what: str,
        *,
        unit: str = "step",
        done: int = 0,
        log: Optional[logging.Logger] = None,
        every_s: Optional[float] = None,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.total, self.what, self.unit = int(total), what, unit
        self.done = self._start_done = int(done)
        self.log = log or logging.getLogger("ilm.progress")
        self.every_s = PROGRESS_EVERY_S if every_s is None else every_s  # read at call time: tests may patch it
        self.clock = clock
        self._started = self._last = clock()
        self._logged_done: Optional[int] = None
        self.fields: dict[str, Field] = {}

    def update(self, n: int = 1, fields: Optional[Mapping[str, Field]] = None) -> None:
        """Add n units done; `fields` (e.g. {"loss": 2.31}) replace those shown in the next line."""
        self.done += n
        if fields:
            self.fields.update(fields)
        if self.clock() - self._last >= self.every_s:
            self.emit()

    def rate(self) -> float:
        """Units per second in this process so far (0 before any)."""
        elapsed = self.clock() - self._started
        return (self.done - self._start_done) / elapsed if elapsed > 0 else 0.0

    def eta(self) -> Optional[float]:
        """Seconds left at the current rate: remaining / rate; None while the rate is unknown."""
        rate = self.rate()
        return max(self.total - self.done, 0) / rate if rate > 0 else None

    def line(self) -> str:
        """The fixed-format line: what | unit done/total (pct) | fields | rate | elapsed | ETA."""
        width = len(str(self.total))
        pct = 100.0 * self.done / self.total if self.total else 100.0
        eta = self.eta()
        parts = [self.what, f"{self.unit} {self.done:0{width}d}/{self.total:0{width}d} ({pct:.1f}%)"]
        parts += [f"{key} {_field(value)}" for key, value in self.fields.items()]
        parts += [
            f"{human(self.rate())} {self.unit}/s",
            f"elapsed {clock_text(self.clock() - self._started)}",
            f"ETA {clock_text(eta) if eta is not None else '?'}",
        ]
        return " | ".join(parts)

    def emit(self) -> None:
        """Log the line now and restart the interval."""
        self.log.info("%s", self.line(), extra={PROGRESS_RECORD: True})
        self._last, self._logged_done = self.clock(), self.done

    def close(self) -> None:
        """Log the final line, unless the last line logged already says as much."""
        if self._logged_done != self.done:
            self.emit()

    def __enter__(self) -> "Progress":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:  # a failing stage has its traceback to say where it stopped
            self.close()


# --- reading the lines back: `ilm progress` ----------------------------------------------------------------

# A Progress line as the `ilm` logging format writes it: "<time> <logger> INFO | <Progress.line()>".
_LINE_MARK = " | ETA "


def latest_lines(log_dir, now: float, max_age_s: float) -> list[tuple[str, float, str]]:
    """(log path, seconds since it was written, its last progress line) of every log under `log_dir` written in
    the last `max_age_s` seconds, oldest write first: the jobs running now. A log with no progress line yet
    shows its last line. Snakemake prints nothing while a job runs; this is what `ilm progress` prints."""
    from pathlib import Path

    rows = []
    for path in Path(log_dir).rglob("*.log"):
        age = now - path.stat().st_mtime
        if age > max_age_s:
            continue
        lines = [line.rstrip() for line in path.read_text(errors="replace").splitlines() if line.strip()]
        if not lines:
            continue
        progress = [line for line in lines if _LINE_MARK in line]
        last = progress[-1] if progress else lines[-1]
        rows.append((str(path), age, last.split(" INFO | ", 1)[-1]))
    return sorted(rows, key=lambda row: -row[1])


def print_progress(log_dir, max_age_s: float, every_s: float, out=None) -> None:
    """Print latest_lines once, or every `every_s` seconds until interrupted (Ctrl-C)."""
    import sys

    out = out or sys.stdout
    while True:
        rows = latest_lines(log_dir, time.time(), max_age_s)
        print(time.strftime("%H:%M:%S"), f"{len(rows)} log(s) written in the last {max_age_s:.0f} s under {log_dir}",
              file=out, flush=True)
        for path, age, line in rows:
            print(f"  {path} ({age:.0f} s ago): {line}", file=out, flush=True)
        if every_s <= 0:
            return
        time.sleep(every_s)


# --- `ilm --log FILE`: everything to the job's log, progress lines to the terminal too --------------------------


def log_to_file(path) -> "logging.Handler":
    """Send this process's whole output (file descriptors 1 and 2: Python's, torch's and C libraries' alike) to
    `path`, and return a logging handler that writes progress lines to the stderr the process started with.

    A rule's `ilm --log {log} ...` keeps its full log in the file, as `> {log} 2>&1` did, while the terminal
    that runs Snakemake shows each long job's progress line (every PROGRESS_EVERY_S seconds).
    """
    import os
    import sys
    from pathlib import Path

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    sys.stdout.flush()
    sys.stderr.flush()
    terminal = os.fdopen(os.dup(2), "w", buffering=1)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)
    handler = logging.StreamHandler(terminal)
    handler.addFilter(lambda record: getattr(record, PROGRESS_RECORD, False))
    handler.setFormatter(logging.Formatter("%(asctime)s %(message)s", datefmt="%H:%M:%S"))
    return handler
