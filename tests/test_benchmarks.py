"""The GPU suite (benchmarks/gpu_suite.py): its quick mode end to end without jsonschema/datasets/snakemake,
the projection's arithmetic, and the per-part guard. No timing is asserted: only structure and arithmetic."""

from __future__ import annotations

import csv
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))

from gpu_suite import (  # noqa: E402
    FULL,
    QUICK,
    PartOverrun,
    projections,
    run_part,
    split_sizes,
    time_budget,
    training_numerics,
)
from projection import project_gpu_hours  # noqa: E402

from ilm.config import load_config  # noqa: E402

BLOCKED = ("jsonschema", "datasets", "snakemake")  # absent on the GPU machine
VARIANTS = ["base", "identity", "bert_like", "inv_first"]


def test_projection_equals_hand_arithmetic():
    """GPU-hours per stage = work / rate, with the work counted by hand for the paper config and a small split."""
    config = load_config(REPO / "config.yaml")
    rates = {"base": 1e6, "identity": 5e5, "bert_like": 2.5e5, "inv_first": 5e5}
    out = project_gpu_hours(config, 10_000, 1_000, rates, 100.0, 2.0, 50.0)
    # 10000 // 4096 = 2 steps per epoch x 25 epochs = 50 steps; validation at step 50 only (val_every 50)
    train_tokens, val_tokens = 50 * 4096 * 256, 1 * 4096 * 256
    assert out["work"]["optimizer_steps"] == 50
    assert (out["work"]["train_tokens"], out["work"]["validation_tokens"]) == (train_tokens, val_tokens)
    assert out["train_per_variant"]["bert_like"] == pytest.approx((52_428_800 + 1_048_576) / 2.5e5 / 3600)
    assert out["stages"]["train"] == pytest.approx(53_477_376 * (1 / 1e6 + 2 / 5e5 + 1 / 2.5e5) / 3600)
    # GCG: 30 % of 1000 test windows = 300 samples x 500 steps at 100 sample-steps/s, 4 variants, each attacked
    # twice (the gradient attack and its gradient-free control)
    assert out["stages"]["gcg"] == pytest.approx(2 * 4 * 300 * 500 / 100 / 3600)
    # inversion: the whole test split (the paper's) = 1000 samples at 2/s, for 4 variants and the bigram baseline
    assert out["work"]["inversion_methods"] == 5
    assert out["stages"]["inversion"] == pytest.approx(5 * 1000 / 2 / 3600)
    # evaluation: all 1000 test windows at 50/s, 4 variants
    assert out["stages"]["evaluate"] == pytest.approx(4 * 1000 / 50 / 3600)
    assert out["total"] == pytest.approx(sum(out["stages"].values()))
    with pytest.raises(ValueError, match="no measured training rate"):
        project_gpu_hours(config, 10_000, 1_000, {"base": 1.0}, 1.0, 1.0, 1.0)


def test_part_guard_records_failure_and_overrun():
    """A part that raises or outlasts its budget is recorded with its error; the suite carries on."""
    failed = run_part("x", lambda: 1 / 0, 5.0, _cpu())
    assert failed["status"] == "failed" and failed["error"].startswith("ZeroDivisionError")

    def slow() -> dict:
        time.sleep(5)
        return {}

    overran = run_part("y", slow, 0.2, _cpu())
    assert overran["status"] == "overran" and "budget of 0.2 s" in overran["error"]
    assert overran["seconds"] < 5
    assert run_part("z", lambda: {"a": 1}, 5.0, _cpu()) | {"seconds": 0} == {
        "status": "ok", "a": 1, "seconds": 0, "budget_s": 5.0}
    with pytest.raises(PartOverrun):
        with time_budget(0.05):
            time.sleep(1)


def test_full_mode_has_every_size_and_fits_the_device_call():
    """The GPU sizes name every key the quick mode does (the tests exercise only --quick); budgets fit 8 minutes."""
    assert set(FULL) == set(QUICK) and set(FULL["budget_s"]) == set(QUICK["budget_s"])
    assert sum(FULL["budget_s"].values()) <= FULL["time_limit_s"] < 8 * 60
    assert FULL["micro_batch"] == 256 and FULL["gcg_width"] == 4096 and FULL["gcg_samples"] == [1, 8, 64]


def test_split_sizes_come_from_stats_json_or_the_paper_estimates(tiny_data_dir: Path):
    """--data-stats reads a prepared split's window counts; without it the paper's estimates are used."""
    splits = json.loads((tiny_data_dir / "stats.json").read_text())["splits"]
    train, test, source = split_sizes(tiny_data_dir / "stats.json")
    assert (train, test) == (splits["train"]["windows"], splits["test"]["windows"]) and source.endswith("stats.json")
    assert split_sizes(None)[:2] == (1_100_000, 140_000)


def test_training_numerics_are_restored_after_the_training_parts():
    """TF32 on CUDA inside the training parts only; the evaluation, GCG and inversion parts see torch's settings."""
    import torch

    before = (torch.backends.cuda.matmul.allow_tf32, torch.get_float32_matmul_precision())
    with training_numerics(torch.device("cuda"), True):  # flags only: no GPU needed
        assert torch.backends.cuda.matmul.allow_tf32 and torch.get_float32_matmul_precision() == "high"
    assert (torch.backends.cuda.matmul.allow_tf32, torch.get_float32_matmul_precision()) == before


def _cpu():
    import torch

    return torch.device("cpu")


@pytest.fixture(scope="module")
def quick_suite(tmp_path_factory) -> Path:
    """The suite's --quick run in a subprocess in which jsonschema, datasets and snakemake cannot be imported."""
    out = tmp_path_factory.mktemp("suite")
    code = (
        "import runpy, sys; "
        f"sys.modules.update(dict.fromkeys({BLOCKED!r})); "
        f"sys.argv = ['gpu_suite.py', '--quick', '--device', 'cpu', '--out-dir', {str(out)!r}, '--commit', 'abc']; "
        "runpy.run_path('benchmarks/gpu_suite.py', run_name='__main__')"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO / "src"), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out


def test_quick_suite_json(quick_suite: Path):
    """Every part ran; every variant is there with positive rates; ratios and speed-ups are rate / reference."""
    result = json.loads((quick_suite / "suite.json").read_text())
    parts = result["parts"]
    assert {name: p["status"] for name, p in parts.items()} == dict.fromkeys(
        ["train_step", "gcg", "evaluate", "inversion", "training_run"], "ok"), parts
    env = result["environment"]
    assert env["git_commit"] == "abc" and env["device_name"].startswith("CPU") and env["torch"] and env["date"]
    assert result["variants"] == VARIANTS

    for label in ("fp32_tf32", "bf16"):
        rows = parts["train_step"]["precisions"][label]
        assert [r["variant"] for r in rows] == VARIANTS
        base = rows[0]["tokens_per_second"]
        for r in rows:
            assert r["tokens_per_second"] > 0
            tokens = parts["train_step"]["micro_batch"] * parts["train_step"]["seq_len"]
            assert r["tokens_per_second"] == pytest.approx(tokens / r["seconds_per_step"])
            assert r["ratio_to_base"] == pytest.approx(r["tokens_per_second"] / base)
    configured = {r["variant"]: r["tokens_per_second"] for r in parts["train_step"]["precisions"]["fp32_tf32"]}
    assert parts["train_step"]["attention"] == "sdpa_math"
    (other,) = parts["train_step"]["other_attention"]["eager"],
    assert [r["variant"] for r in other] == VARIANTS
    for r in other:
        assert r["ratio_to_configured"] == pytest.approx(r["tokens_per_second"] / configured[r["variant"]])

    gcg = parts["gcg"]
    assert [r["samples"] for r in gcg["rows"]] == [1, 2] and gcg["naive_sample_steps_per_second"] > 0
    for r in gcg["rows"]:
        assert r["speedup"] == pytest.approx(r["sample_steps_per_second"] / gcg["naive_sample_steps_per_second"])

    ev = parts["evaluate"]
    assert set(ev["pass_seconds"]) == {"forward", "identity", "bert_like", "inv_first"}
    assert ev["windows_per_second"] == pytest.approx(ev["windows"] / sum(ev["pass_seconds"].values()))

    inv = parts["inversion"]
    assert inv["same_beams_checked"] is True and inv["naive_samples_per_second"] > 0
    for r in inv["rows"]:
        assert r["speedup"] == pytest.approx(r["samples_per_second"] / inv["naive_samples_per_second"])

    run = parts["training_run"]
    assert list(run["variants"]) == VARIANTS
    for v, r in run["variants"].items():
        assert all(math.isfinite(r[k]) for k in ("first_loss", "last_loss", "last_val_loss"))
        assert (r["last_inv_ce"] is None) == (v == "base")
    with open(quick_suite / "training_curves.csv") as f:
        curves = list(csv.DictReader(f))
    assert [c["variant"] for c in curves] == [v for v in VARIANTS for _ in range(result["sizes"]["run_steps"])]
    assert (quick_suite / "training_curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_quick_suite_projection_is_the_recorded_rates_arithmetic(quick_suite: Path):
    """The projection is work / rate by hand, from the rates the JSON records (GCG and inversion at the S used)."""
    result = json.loads((quick_suite / "suite.json").read_text())
    proj, parts = result["projection"], result["parts"]
    assert (proj["train_windows"], proj["test_windows"]) == (1_100_000, 140_000)
    gcg_rate = next(r["sample_steps_per_second"] for r in parts["gcg"]["rows"] if r["samples"] == 2)  # nearest to 8
    inv_rate = parts["inversion"]["rows"][0]["samples_per_second"]
    eval_rate = parts["evaluate"]["windows_per_second"]
    # 1,100,000 // 4096 = 268 steps/epoch x 25 = 6700 steps; 134 validations of 4096 windows; windows of 256
    tokens = 6700 * 4096 * 256 + 134 * 4096 * 256
    for label, projected in proj["by_precision"].items():
        rates = {r["variant"]: r["tokens_per_second"] for r in parts["train_step"]["precisions"][label]}
        assert projected["stages"]["train"] == pytest.approx(sum(tokens / rates[v] / 3600 for v in VARIANTS))
        assert projected["stages"]["gcg"] == pytest.approx(2 * 4 * 42_000 * 500 / gcg_rate / 3600)  # + uniform control
        assert projected["stages"]["inversion"] == pytest.approx(5 * 140_000 / inv_rate / 3600)  # the whole test split
        assert projected["stages"]["evaluate"] == pytest.approx(4 * 140_000 / eval_rate / 3600)


def test_projection_uses_whichever_gcg_part_finished(quick_suite: Path):
    """On the H200 the uncompiled GCG part failed and the compiled one ran: the projection takes the compiled
    rate; with neither, it says which parts it lacks."""
    result = json.loads((quick_suite / "suite.json").read_text())
    config = load_config(REPO / "config.yaml")
    parts = dict(result["parts"])
    compiled = {**parts["gcg"], "compile": True,
                "rows": [{**r, "sample_steps_per_second": 7.0} for r in parts["gcg"]["rows"]]}
    parts.update(gcg={"status": "failed", "error": "TypeError"}, gcg_compiled=compiled)
    proj = projections(config, parts, 1_100_000, 140_000)
    assert proj["rates"]["gcg_compiled"] is True and proj["rates"]["gcg_sample_steps_per_second"] == 7.0
    assert proj["by_precision"]["fp32_tf32"]["stages"]["gcg"] == pytest.approx(2 * 4 * 42_000 * 500 / 7.0 / 3600)
    del parts["gcg_compiled"]
    with pytest.raises(ValueError, match=r"the part\(s\) gcg or gcg_compiled did not finish"):
        projections(config, parts, 1_100_000, 140_000)


def test_quick_suite_markdown(quick_suite: Path):
    """The summary names the device and commit, every part's status, every variant, and the projection."""
    md = (quick_suite / "suite.md").read_text()
    assert md.startswith("# GPU suite: CPU") and "commit abc" in md and "mode quick" in md
    for part in ("train_step", "gcg", "evaluate", "inversion", "training_run"):
        assert f"| {part} | ok |" in md
    for v in VARIANTS:
        assert f"| fp32_tf32 | {v} |" in md and f"| bf16 | {v} |" in md and f"\n| {v} | 2 |" in md
    assert "## Projected paper-scale GPU-hours" in md and "| bf16 |" in md
    assert "same beams as the naive search: checked" in md
