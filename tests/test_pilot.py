"""The PAG pilot: each variant's loss against a hand-written computation, ART's FGSM against a hand FGSM,
accuracies as rates with Wilson intervals, the validation split and the generated texts."""

import math
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from ilm.pilot.attacks import (
    accuracy,
    art_classifier,
    evaluate_robustness,
    fgsm,
    hand_fgsm,
    image_shape,
    rate,
    square_subset,
    sweep_alphas,
    to_images,
)
from ilm.pilot.config import PILOT_VARIANTS, PilotConfig
from ilm.pilot.data import generated_texts
from ilm.pilot.train import ClassBank, PilotMLP, split_validation, train_variant, variant_loss
from ilm.stats import wilson_interval

D, C, B, K = 12, 3, 5, 2


def _setup():
    torch.manual_seed(0)
    model = PilotMLP(D, (8, 6), C).double()
    x = torch.randn(B, D, dtype=torch.float64)
    y = torch.tensor([0, 1, 2, 0, 1])
    bank_x = torch.randn(9, D, dtype=torch.float64)
    bank_y = torch.tensor([0, 0, 0, 1, 1, 1, 2, 2, 2])
    return model, x, y, ClassBank.build(bank_x, bank_y, C)


def _grad(model, x, y_fill):
    """d mean CE(f(x), y) / dx, by autograd on a fresh leaf."""
    x = x.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(F.cross_entropy(model(x), y_fill), x)
    return g


def _cos(a, b):
    return float(a @ b / (a.norm() * b.norm()))


def test_pag_losses_match_a_hand_computation():
    """Each variant's loss equals lambda_ce CE + lambda_pag PAG computed by explicit loops over classes, pairs, features."""
    model, x, y, bank = _setup()
    cfg = PilotConfig.from_dict({"samples_per_class": K})
    ce = float(F.cross_entropy(model(x), y).detach())

    loss, parts = variant_loss("baseline", model, x, y, cfg, bank, torch.Generator().manual_seed(0))
    assert float(loss.detach()) == pytest.approx(ce, rel=1e-12) and parts["pag"] == 0

    g = _grad(model, x, y)
    identity = 1 - np.mean([_cos(g[i], x[i]) for i in range(B)])
    loss, _ = variant_loss("pag_identity", model, x, y, cfg, bank, torch.Generator().manual_seed(0))
    assert float(loss.detach()) == pytest.approx(0.5 * ce + 2.5 * identity, rel=1e-10)

    for variant, per_sample in (("pag_score_similar_samples", True), ("pag_score_similar_features", False)):
        gen = torch.Generator().manual_seed(3)
        loss, _ = variant_loss(variant, model, x, y, cfg, bank, gen)
        gen = torch.Generator().manual_seed(3)  # the same draws, in the same order
        terms = []
        for c in range(C):
            r = bank.draw(K, c if per_sample else None, gen)  # (K, D)
            gc = _grad(model, x, torch.full((B,), c))
            gc = -gc if per_sample else gc
            if per_sample:  # one cosine per (a, i) over the features
                terms.append(np.mean([1 - _cos(gc[i], r[a] - x[i]) for a in range(K) for i in range(B)]))
            else:  # one cosine per feature j over the K*B rows (the paper's dim=0)
                rows_g = torch.cat([gc] * K)  # (K*B, D)
                rows_t = torch.cat([r[a] - x for a in range(K)])
                terms.append(np.mean([1 - _cos(rows_g[:, j], rows_t[:, j]) for j in range(D)]))
        expected = 0.5 * ce + 2.5 * sum(terms) / C
        assert float(loss.detach()) == pytest.approx(expected, rel=1e-10), variant


def test_pag_term_trains_the_weights():
    """The PAG term reaches the weights (double backprop): its gradient on the first layer is non-zero."""
    model, x, y, bank = _setup()
    cfg = PilotConfig.from_dict({"samples_per_class": K, "lambda_ce": {"pag_identity": 0.0}})
    loss, _ = variant_loss("pag_identity", model, x, y, cfg, bank, torch.Generator().manual_seed(0))
    loss.backward()
    assert model.net[0].weight.grad.abs().sum() > 0


def test_art_fgsm_equals_a_hand_fgsm():
    """ART's FGSM through the (C, s, s) wrapper gives x + alpha sign(grad_x CE), as written out by hand."""
    torch.manual_seed(1)
    model = PilotMLP(32, (16,), 2).eval()
    x, y = torch.randn(10, 32), torch.randint(0, 2, (10,))
    clf = art_classifier(model, 32, 2, "cpu")
    adv = fgsm(clf, to_images(x), y.numpy(), 0.05, batch_size=4).reshape(10, 32)
    expected = hand_fgsm(model, x, y, 0.05).numpy()
    np.testing.assert_allclose(adv, expected, atol=1e-6)
    assert np.abs(adv - x.numpy()).max() == pytest.approx(0.05, abs=1e-6)


def test_accuracy_is_a_rate_with_its_wilson_interval():
    """accuracy counts correct predictions over n; its interval is stats.wilson_interval's."""
    torch.manual_seed(2)
    model = PilotMLP(8, (4,), 2).eval()
    x = torch.randn(20, 8)
    pred = model(x).argmax(1).numpy()
    labels = pred.copy()
    labels[:7] = 1 - labels[:7]  # 13 of 20 right
    r = accuracy(art_classifier(model, 8, 2, "cpu"), to_images(x), labels, 8, 0.95)
    assert (r["n"], r["correct"], r["accuracy"]) == (20, 13, 0.65)
    assert (r["low"], r["high"]) == pytest.approx(wilson_interval(13, 20, 0.95))
    assert rate(0, 10, 0.95)["low"] == 0.0 and rate(10, 10, 0.95)["high"] == 1.0


def _recording_attack(calls: list):
    """A stand-in for an ART attack class: records its keyword arguments and inputs, returns the inputs."""

    class Recording:
        def __init__(self, estimator, **kwargs):
            self.kwargs = kwargs

        def generate(self, x, y=None):
            calls.append({**self.kwargs, "x": x.copy()})
            return x

    return Recording


@pytest.mark.parametrize("restarts", [5, 2])
def test_apgd_restarts_reach_art_and_square_runs_on_a_seeded_random_subset(monkeypatch, restarts):
    """pilot.apgd_restarts (default 5, AutoAttack's) is ART's nb_random_init for every APGD-CE radius; Square gets
    pilot.square_samples test samples drawn with pilot.seed: the right size, seeded, and not the first ones."""
    import art.attacks.evasion

    apgd_calls, square_calls = [], []
    monkeypatch.setattr(art.attacks.evasion, "AutoProjectedGradientDescent", _recording_attack(apgd_calls))
    monkeypatch.setattr(art.attacks.evasion, "SquareAttack", _recording_attack(square_calls))
    assert PilotConfig.from_dict({}).apgd_restarts == 5
    cfg = PilotConfig.from_dict({"apgd_restarts": restarts, "apgd_eps": [0.1, 0.5], "square_eps": [0.1],
                                 "square_samples": 7, "fgsm_alphas": [0.01], "sweep_start": 0.01,
                                 "sweep_stop": 0.02, "sweep_step": 0.01, "seed": 3})
    torch.manual_seed(0)
    model = PilotMLP(8, (4,), 2).eval()
    x, y = torch.randn(30, 8), torch.randint(0, 2, (30,))
    evaluate_robustness(model, x, y, 2, cfg, 0.95, "cpu")
    assert [c["nb_random_init"] for c in apgd_calls] == [restarts, restarts]
    chosen = square_subset(30, 7, 3)
    assert len(chosen) == 7 == len(set(chosen.tolist())) and chosen.tolist() != list(range(7))
    np.testing.assert_array_equal(square_calls[0]["x"], to_images(x)[chosen])
    assert np.array_equal(square_subset(30, 7, 3), chosen) and not np.array_equal(square_subset(30, 7, 4), chosen)
    assert square_subset(30, None, 3).tolist() == list(range(30)) == square_subset(30, 40, 3).tolist()


def test_image_shape_and_sweep():
    """Embeddings fold into (C, s, s) with the largest square (768 -> 3x16x16, the paper's); the sweep spans [start, stop)."""
    assert image_shape(768) == (3, 16, 16) and image_shape(384) == (6, 8, 8) and image_shape(7) == (7, 1, 1)
    alphas = sweep_alphas(PilotConfig.from_dict({}))
    assert len(alphas) == 100 and alphas[0] == 1e-8 and alphas[-1] < 0.05
    assert math.isclose(alphas[1] - alphas[0], 5e-4)


def test_validation_split_is_stratified_seeded_and_disjoint():
    """The validation split holds the fraction of each class, the same for the same seed, disjoint from train."""
    labels = np.array([0] * 50 + [1] * 30)
    tr, va = split_validation(labels, 0.1, seed=4)
    assert set(tr).isdisjoint(va) and len(tr) + len(va) == 80
    assert np.bincount(labels[va]).tolist() == [5, 3]
    assert np.array_equal(va, split_validation(labels, 0.1, seed=4)[1])
    assert not np.array_equal(va, split_validation(labels, 0.1, seed=5)[1])


def test_training_is_deterministic_and_learns_a_separable_task():
    """Two trainings with the same seed give bitwise equal weights; the selected model beats chance on validation."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(120, 6, generator=g)
    y = (x[:, 0] > 0).long()
    cfg = PilotConfig.from_dict({"epochs": 15, "batch_size": 32, "samples_per_class": 3, "lr": 1e-2,
                                 "hidden_sizes": [8]})
    a, hist = train_variant("pag_score_similar_samples", x, y, 2, cfg, "cpu")
    b, _ = train_variant("pag_score_similar_samples", x, y, 2, cfg, "cpu")
    for (k, va), vb in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(va, vb), k
    assert max(h["val_acc"] for h in hist) > 0.8


@pytest.mark.parametrize("variant", PILOT_VARIANTS)
def test_one_training_epoch_raises_no_user_warning(variant):
    """A tiny epoch of each variant, validation included, raises no UserWarning (torch's warn-once made always)."""
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(40, 6, generator=g), torch.arange(40) % 2
    cfg = PilotConfig.from_dict({"epochs": 1, "batch_size": 8, "samples_per_class": 2, "hidden_sizes": [8]})
    always = torch.is_warn_always_enabled()
    torch.set_warn_always(True)  # torch warns once per process: an earlier test must not use the warning up
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", UserWarning)
            train_variant(variant, x, y, 2, cfg, "cpu")
    finally:
        torch.set_warn_always(always)


def test_generated_texts_are_balanced_and_seeded():
    """The generated corpus has balanced labels, the same texts for the same seed, and sentiment in its words."""
    texts, labels = generated_texts(40, seed=3)
    assert len(texts) == 40 and labels.sum() == 20
    assert generated_texts(40, seed=3)[0] == texts and generated_texts(40, seed=4)[0] != texts
    assert all("In the end everyone" in t for t in texts)


def test_truncated_embeddings_exit_2_naming_the_file_and_the_fix(tmp_path, capsys):
    """A cut-off train.safetensors stops `ilm pilot train` with exit 2 and one line: the file and the rebuild command."""
    import json

    from ilm.cli import main
    from ilm.pilot.data import write_embeddings

    path = tmp_path / "train.safetensors"
    write_embeddings(path, torch.randn(20, D), np.arange(20) % 2)
    path.write_bytes(path.read_bytes()[:-50])
    info = tmp_path / "info.json"
    info.write_text(json.dumps({"classes": 2}))
    out = tmp_path / "baseline"
    code = main(["pilot", "train", "--variant", "baseline", "--train", str(path), "--info", str(info),
                 "--model-out", str(out / "classifier.safetensors"), "--log-out", str(out / "train_log.csv"),
                 "--run-out", str(out / "run.json")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1
    assert f"{path} is truncated or corrupt" in err[0] and "snakemake --forcerun embed_pilot" in err[0]


def _pilot_metrics(path, variant: str, correct: int, n: int = 40, confidence: float = 0.95) -> str:
    """A metrics JSON as `ilm pilot attack` writes it: clean, one APGD row on a subset, a two-step FGSM sweep."""
    import json

    from ilm.pilot.attacks import rate

    path.write_text(json.dumps({
        "variant": variant, "confidence": confidence, "clean": rate(correct, n, confidence),
        "attacks": [{"attack": "APGD-CE", "norm": "L2", "eps": 0.5, **rate(correct // 2, n // 2, confidence)}],
        "sweep": [{"alpha": a, **rate(correct - k, n, confidence)} for k, a in enumerate((0.0, 0.1))],
    }))
    return str(path)


def test_pag_pilot_table_and_figure_are_ilm_table_and_figure(tmp_path):
    """`ilm table pag_pilot` gives a row per variant in PILOT_VARIANTS order with 100*correct/n and the subset's n;
    `ilm figure pag_fgsm_sweep` draws both files; metrics at another confidence exit 2."""
    import pandas as pd

    from ilm.cli import main

    files = [_pilot_metrics(tmp_path / f"{v}.json", v, c) for v, c in (("pag_identity", 30), ("baseline", 10))]
    assert main(["table", "pag_pilot", "--inputs", *files, "--out-stem", str(tmp_path / "t" / "pag_pilot")]) == 0
    table = pd.read_csv(tmp_path / "t" / "pag_pilot.csv")
    assert list(table["Model"]) == ["Baseline", "PAG-identity"]
    assert table["Clean (%)"].tolist() == pytest.approx([25.0, 75.0], abs=0.05)
    assert table["APGD-CE L2 ε=0.5 n"].tolist() == [20, 20]
    assert (tmp_path / "t" / "pag_pilot.html").is_file()
    assert main(["figure", "pag_fgsm_sweep", "--inputs", *files, "--out-stem", str(tmp_path / "f" / "sweep")]) == 0
    assert all((tmp_path / "f" / f"sweep{s}").stat().st_size > 0 for s in (".pdf", ".png"))
    other = _pilot_metrics(tmp_path / "other.json", "baseline", 10, confidence=0.9)
    assert main(["table", "pag_pilot", "--inputs", other, "--out-stem", str(tmp_path / "t2" / "pag_pilot")]) == 2
