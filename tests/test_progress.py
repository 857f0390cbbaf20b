"""The shared progress line: its cadence, rate, ETA and fixed format, and no carriage-return frames in job logs."""

from __future__ import annotations

import logging
import os
import re
import sys

import numpy as np
import pytest

import ilm.progress
from ilm.progress import PROGRESS_EVERY_S, Progress, clock_text, human
from tiny import save_tiny_model, tiny_config, write_splits

LINE = re.compile(
    r"^(?P<what>[^|]+) \| (?P<unit>\S+) (?P<done>\d+)/(?P<total>\d+) \(\d+\.\d%\)( \| [^|]+)* \| "
    r"\S+ (?P=unit)/s \| elapsed \d+:\d\d:\d\d \| ETA (\d+:\d\d:\d\d|\?)$"
)


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def lines(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "ilm.test"]


@pytest.fixture
def reporter(caplog):
    caplog.set_level(logging.INFO, logger="ilm")
    clock = FakeClock()

    def make(total: int, **kwargs) -> Progress:
        return Progress(total, "train base", log=logging.getLogger("ilm.test"), clock=clock, **kwargs)

    return make, clock


def test_a_line_appears_each_time_the_interval_has_passed(reporter, caplog):
    """No line before 30 s have passed since the last one; one as soon as they have; close() always logs."""
    make, clock = reporter
    progress = make(100)
    assert PROGRESS_EVERY_S == 30.0
    for t in (1, 10, 29.9):
        clock.now = 1000 + t
        progress.update(1)
    assert lines(caplog) == []
    clock.now = 1030.0
    progress.update(1)
    assert len(lines(caplog)) == 1
    clock.now = 1059.0  # 29 s after that line
    progress.update(1)
    assert len(lines(caplog)) == 1
    clock.now = 1060.0
    progress.update(1)
    clock.now = 1061.0
    progress.update(1)
    progress.close()
    progress.close()  # nothing new to say
    assert len(lines(caplog)) == 3 and all(LINE.match(line) for line in lines(caplog))
    assert lines(caplog)[-1].startswith("train base | step 007/100 (7.0%) |")


def test_eta_is_the_remaining_units_over_the_rate(reporter, caplog):
    """At 20 of 100 steps after 40 s the rate is 0.5 step/s and the ETA 80 / 0.5 = 160 s; the line says so."""
    make, clock = reporter
    progress = make(100)
    clock.now = 1040.0
    progress.update(20, {"loss": 2.3125, "tok/s": human(1_234_567)})
    assert progress.rate() == pytest.approx(0.5, rel=1e-12)
    assert progress.eta() == pytest.approx((100 - 20) / 0.5, rel=1e-12)
    assert lines(caplog) == [
        "train base | step 020/100 (20.0%) | loss 2.312 | tok/s 1.23M | 0.5 step/s | elapsed 0:00:40 | ETA 0:02:40"
    ]


def test_a_resumed_run_takes_its_rate_from_this_process_only(reporter, caplog):
    """Units done before the process started count in done/total but not in the rate."""
    make, clock = reporter
    progress = make(1000, done=600, unit="sample-step")
    clock.now = 1100.0
    progress.update(100)
    assert progress.rate() == pytest.approx(1.0) and progress.eta() == pytest.approx(300.0)
    assert lines(caplog)[0].startswith("train base | sample-step 0700/1000 (70.0%) | 1 sample-step/s |")


def test_unknown_rate_and_clock_text(reporter):
    """Before any unit the ETA is '?'; durations print as H:MM:SS; rates take k/M/G suffixes."""
    make, _ = reporter
    assert make(10).line().endswith("| ETA ?")
    assert clock_text(0) == "0:00:00" and clock_text(3725.4) == "1:02:05" and clock_text(90061) == "25:01:01"
    assert human(0.0123) == "0.0123" and human(950) == "950" and human(12_345) == "12.3k" and human(2.5e9) == "2.5G"


def test_hub_and_datasets_bars_are_off_when_stderr_is_no_terminal(monkeypatch):
    """quiet_progress_bars sets both libraries' switches when stderr is a file, and keeps a value the user set."""
    from ilm.commands import quiet_progress_bars

    monkeypatch.delenv("HF_HUB_DISABLE_PROGRESS_BARS", raising=False)
    monkeypatch.setenv("HF_DATASETS_DISABLE_PROGRESS_BARS", "0")
    monkeypatch.setattr(sys.stderr, "isatty", lambda: False, raising=False)
    quiet_progress_bars()
    assert os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] == "1" and os.environ["HF_DATASETS_DISABLE_PROGRESS_BARS"] == "0"


def test_the_interval_is_no_setting_of_any_stage():
    """The cadence lives in ilm.progress only: no config key can carry it into a stage's slice (and rerun it)."""
    from ilm.config import load_config

    def keys(node) -> set[str]:
        if isinstance(node, dict):
            return set(node) | {k for v in node.values() for k in keys(v)}
        return set()

    assert not any("progress" in key or "every_s" in key for key in keys(load_config(None)))


# --- no carriage-return frames: every stage with stderr going to a file -------------------------------------
# Each helper sets a stage up and returns the call that runs it, so only the stage's own output is checked.


def _train(tmp_path):
    from ilm.train import train

    data = write_splits(tmp_path / "data")
    return lambda: train(data, tmp_path / "out", tmp_path / "ckpt", "base", tiny_config())


def _evaluate(tmp_path):
    from ilm.evaluate import evaluate

    model, data = save_tiny_model(tmp_path / "model"), write_splits(tmp_path / "data")
    return lambda: evaluate(model, data, "identity", tmp_path / "forward.json", tmp_path / "inverse.json",
                            tiny_config())


def _gcg(tmp_path):
    from ilm.attack import attack_shard

    model, data = save_tiny_model(tmp_path / "model"), write_splits(tmp_path / "data")
    return lambda: attack_shard(model, data, 0, tmp_path / "shard0.jsonl", tiny_config())


def _invert(tmp_path):
    from ilm.invert import invert_shard, write_bigram_counts

    model, data, config = save_tiny_model(tmp_path / "model"), write_splits(tmp_path / "data"), tiny_config()
    write_bigram_counts(data, tmp_path / "bigram.npy", config)
    return lambda: invert_shard(model, data, tmp_path / "bigram.npy", "identity", 0, tmp_path / "shard0.jsonl", config)


def _pilot(tmp_path):
    import torch

    from ilm.pilot.config import PilotConfig
    from ilm.pilot.train import train_variant

    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(40, 6, generator=g), torch.arange(40) % 2
    cfg = PilotConfig.from_dict({"epochs": 2, "batch_size": 8})
    return lambda: train_variant("pag_identity", x, y, 2, cfg, "cpu")


@pytest.fixture
def quiet_transformers():
    """As the CLI's stage commands do: transformers' own weight-loading bars off (restored afterwards)."""
    from transformers.utils import logging as hf_logging

    from ilm.commands import quiet_transformers

    enabled = hf_logging.is_progress_bar_enabled()
    quiet_transformers()
    yield
    if enabled:
        hf_logging.enable_progress_bar()


@pytest.mark.parametrize("stage", [_train, _evaluate, _gcg, _invert, _pilot], ids=lambda f: f.__name__[1:])
def test_stage_logs_progress_lines_and_no_carriage_returns(
    stage, tmp_path, capfd, monkeypatch, caplog, quiet_transformers
):
    """With stderr a file (as under a rule's `> {log} 2>&1`), a stage writes progress lines and no '\\r' at all."""
    run = stage(tmp_path)
    capfd.readouterr()
    monkeypatch.setattr(ilm.progress, "PROGRESS_EVERY_S", 0.0)  # a line at every update
    caplog.set_level(logging.INFO, logger="ilm")
    handler = logging.StreamHandler(sys.stderr)  # what the CLI's basicConfig sets up
    logging.getLogger("ilm").addHandler(handler)
    try:
        run()
    finally:
        logging.getLogger("ilm").removeHandler(handler)
    out, err = capfd.readouterr()
    assert "\r" not in out + err
    progress = [line for line in err.splitlines() if LINE.match(line)]
    assert len(progress) >= 2, err
    done, total = LINE.match(progress[-1]).group("done", "total")
    assert done == total and progress[-1].endswith("ETA 0:00:00")
    assert np.all(np.diff([int(LINE.match(line)["done"]) for line in progress]) >= 0)


def test_ilm_progress_prints_the_last_progress_line_of_each_running_job(tmp_path, capsys):
    """`ilm progress`: one line per log written within --max-age, its newest progress line (or, before the first,
    its last line), oldest write first; logs of finished jobs (older) are left out; a missing folder is an error."""
    from ilm.cli import main
    from ilm.progress import latest_lines

    logs = tmp_path / "logs"
    (logs / "train").mkdir(parents=True)
    (logs / "gcg").mkdir()
    now = 1_000_000.0
    files = {
        "train/identity.log": (["12:00:00 ilm.train INFO | training identity: 606,848 parameters",
                                "12:00:31 ilm.train INFO | train identity | step 011/510 (2.2%) | ETA 0:23:23",
                                "12:00:40 ilm.train INFO | step 00020/00510 | loss 7.89 | val 7.79",
                                "12:01:02 ilm.train INFO | train identity | step 023/510 (4.5%) | ETA 0:22:24"], 20),
        "gcg/base/shard0.log": (["12:01:05 ilm.attack INFO | base shard 0: 64 samples, 0 done"], 5),
        "train/base.log": (["11:50:00 ilm.train INFO | train base | step 051/051 (100.0%) | ETA 0:00:00"], 900),
    }
    for name, (lines, age) in files.items():
        path = logs / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("\n".join(lines) + "\n")
        os.utime(path, (now - age, now - age))
    rows = latest_lines(logs, now, max_age_s=300)
    assert [(os.path.relpath(p, logs), round(age)) for p, age, _ in rows] == [("train/identity.log", 20),
                                                                             ("gcg/base/shard0.log", 5)]
    assert rows[0][2] == "train identity | step 023/510 (4.5%) | ETA 0:22:24"
    assert rows[1][2] == "base shard 0: 64 samples, 0 done"
    assert main(["progress", "--logs", str(logs), "--max-age", "1e10"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].endswith(f"3 log(s) written in the last 10000000000 s under {logs}") and len(out) == 4
    assert out[1].startswith(f"  {logs / 'train/base.log'} (") and out[1].endswith("): train base | step 051/051 (100.0%) | ETA 0:00:00")
    assert main(["progress", "--logs", str(tmp_path / "none")]) == 2
    assert "is not a folder" in capsys.readouterr().err


def test_ilm_log_keeps_the_whole_output_in_the_file_and_shows_progress_on_the_terminal(tmp_path):
    """`ilm --log FILE train ...` (how rules call long stages): the file holds every line the job writes (the
    logging, and output written straight to the file descriptors); the terminal gets the progress lines alone."""
    import json
    import subprocess

    data = write_splits(tmp_path / "data")
    config = tmp_path / "config.json"
    config.write_text(json.dumps(tiny_config()))
    log = tmp_path / "logs" / "train" / "base.log"
    code = ("import os, sys; os.write(2, b'from C\\n'); print('from Python'); "
            "from ilm.cli import main; sys.exit(main(sys.argv[1:]))")
    proc = subprocess.run(
        [sys.executable, "-c", code, "--log", str(log), "--threads", "1", "train", "--data-dir", str(data),
         "--variant", "base", "--out", str(tmp_path / "out"), "--checkpoint-dir", str(tmp_path / "ckpt"),
         "--config", str(config)],
        capture_output=True, text=True, timeout=600,
    )
    # the two writes before main() reach the terminal: the redirection starts when `ilm` parses --log
    assert proc.returncode == 0, proc.stderr
    terminal = [line for line in proc.stderr.splitlines() if line != "from C"]
    assert terminal and all(LINE.match(line.split(" ", 1)[1]) for line in terminal), proc.stderr
    assert proc.stdout == "from Python\n"
    text = log.read_text()
    assert "ilm.train INFO | training base" in text  # an ordinary log line: the file only
    assert terminal[-1].split(" ", 1)[1] in text  # the last progress line: both
    assert not any(line.split(" ", 1)[1] in proc.stderr for line in text.splitlines() if "training base" in line)
