"""The ILM objectives (docs/method.md §1) against independent computations on tiny float64 models."""

from __future__ import annotations

import math
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch
from transformers.models.llama import modeling_llama

import reference
from ilm.config import load_config
from ilm.model import ATTENTION, build_model, count_parameters, use_attention
from ilm.names import BOS_ID, MASK_ID, PAD_ID, PROTOCOLS, VARIANTS
from ilm.objectives import (
    ObjectiveConfig,
    apply_mask,
    compute_objective,
    draw_mask_positions,
    forward_ce,
    inverse_logits,
    inverse_rows,
    mask_count,
    parse_variant,
    project_to_vocab,
    topk_correct,
)
from tiny import TINY_MODEL, VOCAB, tiny_model, tiny_model_config


def objective(**values) -> ObjectiveConfig:
    """The objective section with some values set, the rest the schema's defaults."""
    return ObjectiveConfig.from_dict(values)

REPO = Path(__file__).resolve().parents[1]
MICRO = dict(hidden_size=8, intermediate_size=16, vocab_size=16, max_position_embeddings=8)
MASK_SEED = 7
TOL = dict(rtol=1e-10, atol=1e-10)


def _rmsnorm_in_input_dtype(self, hidden_states):
    variance = hidden_states.pow(2).mean(-1, keepdim=True)
    return self.weight * (hidden_states * torch.rsqrt(variance + self.variance_epsilon))


def _eager_attention_in_input_dtype(module, query, key, value, attention_mask, scaling, dropout=0.0, **kwargs):
    keys = modeling_llama.repeat_kv(key, module.num_key_value_groups)  # (B, H, T, hd)
    values = modeling_llama.repeat_kv(value, module.num_key_value_groups)
    scores = query @ keys.transpose(2, 3) * scaling  # (B, H, T, T)
    if attention_mask is not None:
        scores = scores + attention_mask
    weights = scores.softmax(dim=-1)
    return (weights @ values).transpose(1, 2).contiguous(), weights


@pytest.fixture(autouse=True)
def float64_model_numerics(monkeypatch):
    """Keep HF's RMSNorm and eager softmax in float64 (they run in float32) for 1e-10 tolerances and gradcheck."""
    monkeypatch.setattr(modeling_llama.LlamaRMSNorm, "forward", _rmsnorm_in_input_dtype)
    monkeypatch.setattr(modeling_llama, "eager_attention_forward", _eager_attention_in_input_dtype)


@pytest.fixture(scope="module")
def tiny():
    return tiny_model(dtype=torch.float64)


def _ids(n: int = 3, t: int = 10, vocab: int = VOCAB, seed: int = 1) -> torch.Tensor:
    return torch.randint(0, vocab, (n, t), generator=torch.Generator().manual_seed(seed))


def _gen(seed: int = MASK_SEED) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _ref_inverse_ce(model, ids, variant, cfg):
    """The inverse CE of a variant, from the per-sequence reference (same Bert-like positions)."""
    protocol, grad_only = parse_variant(variant)
    positions = draw_mask_positions(*ids.shape, cfg.mask_fraction, _gen()) if protocol == "bert_like" else None
    logits, targets = reference.inverse_rows(model, ids, protocol, grad_only, cfg.grad_scale_tokens, positions)
    return reference.cross_entropy(logits, targets)


@pytest.mark.parametrize("variant", [v for v in VARIANTS if v != "base"])
@pytest.mark.parametrize("scale", [65536.0, 1.0])
def test_inverse_loss_matches_independent_computation(tiny, variant, scale):
    """Every ILM variant's inverse CE equals a per-sequence, hand-normed, hand-CE reference."""
    cfg = objective(grad_scale_tokens=scale, mask_fraction=0.25)
    ids = _ids()
    out = compute_objective(tiny, ids, variant, cfg, generator=_gen())
    expected = _ref_inverse_ce(tiny, ids, variant, cfg)
    torch.testing.assert_close(out.inv_ce, expected, **TOL)
    torch.testing.assert_close(out.loss.detach(), cfg.lambda_ce * out.ce + cfg.lambda_inv * expected, **TOL)
    tiny.zero_grad(set_to_none=True)


def test_forward_ce_ignores_last_position_and_matches_hf(tiny):
    """Forward CE scores logits[:, :-1] against ids[:, 1:] only, as HF's own shifted-labels loss."""
    ids = _ids()
    x = tiny.model.embed_tokens(ids)
    ce = forward_ce(tiny, x, ids[:, 1:])
    logp = torch.log_softmax(tiny(input_ids=ids).logits, -1)  # (N, T, V)
    by_hand = -logp[:, :-1].gather(2, ids[:, 1:, None]).mean()
    torch.testing.assert_close(ce, by_hand, **TOL)
    hf_loss = tiny(input_ids=ids, labels=ids).loss  # HF upcasts logits to float32
    torch.testing.assert_close(ce, hf_loss.double(), rtol=1e-6, atol=1e-6)
    per_token = forward_ce(tiny, x, ids[:, 1:], reduction="none")
    assert per_token.shape == (3, 9)
    torch.testing.assert_close(forward_ce(tiny, x, ids[:, 1:], reduction="sum"), per_token.sum(), **TOL)
    # the paper's version also scores position T-1 against <unk>: ours must not equal it
    bogus = torch.cat([-logp[:, :-1].gather(2, ids[:, 1:, None]), -logp[:, -1:, :1]], 1).mean()
    assert not torch.isclose(ce, bogus)


def test_forward_ce_rejects_misaligned_targets(tiny):
    """Targets neither ids[:, 1:]-shaped (N, T-1) nor with a last target (N, T) raise ValueError."""
    ids = _ids()
    for targets in (ids[:, 2:], torch.cat([ids, ids[:, :1]], 1)):
        with pytest.raises(ValueError, match="T-1"):
            forward_ce(tiny, tiny.model.embed_tokens(ids), targets)


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_gradient_scale_independent_of_batch(tiny, protocol):
    """A sequence's inverse logits are the same alone or inside a batch of 3."""
    cfg = objective(grad_scale_tokens=4.0)
    ids = _ids()
    _, batch_logits, _ = inverse_logits(tiny, ids, protocol, True, cfg, generator=_gen(0))
    _, alone_logits, _ = inverse_logits(tiny, ids[1:2], protocol, True, cfg, generator=_gen(0))
    rows = batch_logits.shape[0] // 3
    if protocol == "bert_like":  # the mask differs between draws of different batch size
        positions = draw_mask_positions(3, 10, cfg.mask_fraction, _gen(0))
        alone = _masked_logits_for(tiny, ids[1:2], positions[1:2], cfg)
        torch.testing.assert_close(batch_logits[rows:2 * rows], alone, **TOL)
    else:
        torch.testing.assert_close(batch_logits[rows:2 * rows], alone_logits, **TOL)


def _masked_logits_for(model, ids, positions, cfg):
    logits, _ = reference.inverse_rows(model, ids, "bert_like", True, cfg.grad_scale_tokens, positions)
    return logits


def test_project_to_vocab_is_manual_rmsnorm_times_embedding(tiny):
    """Projection = RMSNorm_final(v) @ E^T with the head detached and the norm weight trained."""
    v = torch.randn(5, TINY_MODEL["hidden_size"], dtype=torch.float64, generator=_gen(3))
    logits = project_to_vocab(tiny, v)
    eps = tiny.config.rms_norm_eps
    h = v * torch.rsqrt(v.pow(2).mean(-1, keepdim=True) + eps) * tiny.model.norm.weight
    torch.testing.assert_close(logits, h @ tiny.model.embed_tokens.weight.T, **TOL)
    tiny.zero_grad(set_to_none=True)
    logits.sum().backward()
    assert tiny.model.embed_tokens.weight.grad is None
    assert tiny.model.norm.weight.grad is not None and tiny.model.norm.weight.grad.abs().sum() > 0
    tiny.zero_grad(set_to_none=True)


# ---- double backprop ------------------------------------------------------------------------------


@contextmanager
def _weight_as_input(module: torch.nn.Module, w: torch.Tensor):
    """Temporarily swap `module.weight` (a Parameter) for a plain tensor `w`."""
    param = module.weight
    del module.weight
    module.weight = w
    try:
        yield
    finally:
        del module.weight
        module.weight = param


@pytest.mark.parametrize("variant", ["identity", "bert_like", "inv_first", "identity_grad", "bert_like_grad"])
def test_gradcheck_double_backprop(variant):
    """The total ILM loss's analytic gradient (through g) matches finite differences."""
    model = tiny_model(seed=2, dtype=torch.float64, **MICRO)
    cfg = objective(grad_scale_tokens=1.0, mask_fraction=0.4)
    ids = _ids(n=2, t=5, vocab=16, seed=4)
    layer_norm = model.model.layers[0].post_attention_layernorm
    final_norm = model.model.norm

    def loss_of(w_layer, w_final):
        with _weight_as_input(layer_norm, w_layer), _weight_as_input(final_norm, w_final):
            return compute_objective(model, ids, variant, cfg, generator=_gen(), top_k=(1,)).loss

    d = MICRO["hidden_size"]
    w0 = layer_norm.weight.detach().clone() + 0.1 * torch.randn(d, dtype=torch.float64, generator=_gen(5))
    w1 = final_norm.weight.detach().clone() + 0.1 * torch.randn(d, dtype=torch.float64, generator=_gen(6))
    assert torch.autograd.gradcheck(loss_of, (w0.requires_grad_(), w1.requires_grad_()), eps=1e-6, atol=1e-7, rtol=1e-5)


@pytest.mark.parametrize("attention", [a for a in ATTENTION if a != "eager"])
@pytest.mark.parametrize("variant", ["base", "identity", "bert_like"])
def test_attention_implementations_give_eager_loss_and_gradient(attention, variant):
    """train.attention: every implementation gives eager's loss and double-backprop parameter gradients (float64),
    and is causal (a change to the last token leaves the earlier positions' logits as they were)."""
    cfg = objective(grad_scale_tokens=1.0, mask_fraction=0.25)
    ids = _ids()
    results = []
    for name in ("eager", attention):
        model = use_attention(tiny_model(seed=3, dtype=torch.float64), name)
        assert model.config._attn_implementation == name
        out = compute_objective(model, ids, variant, cfg, generator=_gen())
        out.loss.backward()
        results.append((out.loss.detach(), torch.cat([p.grad.flatten() for p in model.parameters()])))
    (eager_loss, eager_grad), (loss, grad) = results
    torch.testing.assert_close(loss, eager_loss, **TOL)
    torch.testing.assert_close(grad, eager_grad, **TOL)
    assert grad.abs().max() > 0
    changed = ids.clone()
    changed[:, -1] = (ids[:, -1] + 1) % VOCAB
    with torch.no_grad():
        before, after = (model(input_ids=x).logits for x in (ids, changed))
    torch.testing.assert_close(after[:, :-1], before[:, :-1], **TOL)
    assert (after[:, -1] - before[:, -1]).abs().max() > 1e-6


def test_unknown_attention_names_the_valid_ones():
    with pytest.raises(ValueError, match="attention must be one of eager, sdpa_math"):
        use_attention(tiny_model(), "sdpa")


def _embedding_grad(model, ids, variant, cfg, create_graph):
    model.zero_grad(set_to_none=True)
    compute_objective(model, ids, variant, cfg, generator=_gen(), create_graph=create_graph).loss.backward()
    grad = model.model.embed_tokens.weight.grad
    model.zero_grad(set_to_none=True)
    return torch.zeros_like(model.model.embed_tokens.weight) if grad is None else grad.clone()


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_double_backprop_changes_the_gradient(tiny, protocol):
    """The embedding gradient with g kept in the graph differs from the one with g a constant."""
    cfg = objective(grad_scale_tokens=1.0)
    ids = _ids()
    with_graph = _embedding_grad(tiny, ids, protocol, cfg, create_graph=True)
    constant_g = _embedding_grad(tiny, ids, protocol, cfg, create_graph=False)
    assert (with_graph - constant_g).norm() > 1e-3 * with_graph.norm()


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_gradient_only_inverse_loss_reaches_embeddings_only_through_g(tiny, protocol):
    """With lambda_ce = 0, a gradient-only variant's loss moves E only via double backprop; x - g also via x."""
    cfg = objective(lambda_ce=0.0, grad_scale_tokens=1.0)
    ids = _ids()
    assert _embedding_grad(tiny, ids, protocol + "_grad", cfg, create_graph=False).abs().max() == 0
    assert _embedding_grad(tiny, ids, protocol + "_grad", cfg, create_graph=True).abs().max() > 0
    if protocol != "bert_like":  # E[pad] is nn.Embedding's padding_idx row: it never receives gradient
        assert _embedding_grad(tiny, ids, protocol, cfg, create_graph=False).abs().max() > 0


# ---- controls (objective.exclude_last_position, objective.mask_placeholder) -----------------------------


@pytest.mark.parametrize("variant", ["identity", "bert_like", "bert_like_grad"])
def test_exclude_last_position_matches_the_reference(tiny, variant):
    """Without the last position (g == 0 there): Identity has T-1 rows per window, Bert-like never masks T-1,
    and the inverse CE equals the reference computed on those rows."""
    cfg = objective(grad_scale_tokens=1.0, mask_fraction=0.25, exclude_last_position=True)
    ids = _ids(t=10)
    protocol, grad_only = parse_variant(variant)
    out = compute_objective(tiny, ids, variant, cfg, generator=_gen())
    positions = draw_mask_positions(ids.shape[0], 9, cfg.mask_fraction, _gen()) if protocol == "bert_like" else None
    logits, targets = reference.inverse_rows(tiny, ids, protocol, grad_only, 1.0, positions, exclude_last=True)
    torch.testing.assert_close(out.inv_ce, reference.cross_entropy(logits, targets), **TOL)
    assert out.inv_rows == (3 * 9 if protocol == "identity" else 3 * 2)
    rows = inverse_rows(tiny, ids, protocol, cfg, generator=_gen())
    assert int(rows.positions.max()) == 8 and rows.g.abs().amax(-1).min() > 0  # no zero-g row is left
    tiny.zero_grad(set_to_none=True)


def test_bert_like_masks_never_hit_the_last_position_when_excluded():
    """Drawn over T-1 positions, the masks cover 0..T-2 and never T-1."""
    positions = draw_mask_positions(4000, 9, 0.25, _gen(3))
    assert set(positions.unique().tolist()) == set(range(9))


def test_mask_placeholder_mask_puts_mask_and_matches_the_reference(tiny):
    """mask_placeholder = mask: the masked positions hold <mask>, and the inverse CE equals the reference's."""
    cfg = objective(grad_scale_tokens=1.0, mask_fraction=0.25, mask_placeholder="mask")
    assert cfg.placeholder_id == MASK_ID and not cfg.frozen_pad_row
    ids = _ids()
    rows = inverse_rows(tiny, ids, "bert_like", cfg, generator=_gen())
    torch.testing.assert_close(rows.x, tiny.model.embed_tokens.weight.detach()[MASK_ID].expand_as(rows.x))
    out = compute_objective(tiny, ids, "bert_like", cfg, generator=_gen())
    positions = draw_mask_positions(*ids.shape, cfg.mask_fraction, _gen())
    logits, targets = reference.inverse_rows(tiny, ids, "bert_like", False, 1.0, positions, placeholder=MASK_ID)
    torch.testing.assert_close(out.inv_ce, reference.cross_entropy(logits, targets), **TOL)
    tiny.zero_grad(set_to_none=True)


@pytest.mark.parametrize("variant", ["bert_like", "bert_like_grad"])
def test_paper_int3_projects_3_minus_g_and_matches_the_reference(tiny, variant):
    """mask_placeholder = paper_int3: <pad> at the masked positions, x = the integer pad id 3 as a vector of ones
    (3*1 - g, the paper's strategy(pad_token_id, g)); the inverse CE equals a per-sequence reference; the
    gradient-only variant still projects g alone."""
    cfg = objective(grad_scale_tokens=1.0, mask_fraction=0.25, mask_placeholder="paper_int3")
    assert cfg.placeholder_id == PAD_ID == 3 and cfg.frozen_pad_row
    ids = _ids()
    rows = inverse_rows(tiny, ids, "bert_like", cfg, generator=_gen())
    assert torch.equal(rows.x, torch.full_like(rows.x, 3.0))
    out = compute_objective(tiny, ids, variant, cfg, generator=_gen())
    positions = draw_mask_positions(*ids.shape, cfg.mask_fraction, _gen())
    grad_only = variant.endswith("_grad")
    logits, targets = reference.inverse_rows(tiny, ids, "bert_like", grad_only, 1.0, positions, x_value=3.0)
    torch.testing.assert_close(out.inv_ce, reference.cross_entropy(logits, targets), **TOL)
    pad_frozen = compute_objective(tiny, ids, variant, objective(grad_scale_tokens=1.0, mask_fraction=0.25),
                                   generator=_gen())
    assert bool(torch.isclose(out.inv_ce, pad_frozen.inv_ce)) == grad_only  # E[pad] - g differs from 3*1 - g
    tiny.zero_grad(set_to_none=True)


@pytest.mark.parametrize("variant", ["identity", "bert_like", "inv_first"])
def test_last_target_unk_trains_the_last_position_as_the_paper(tiny, variant):
    """last_target = unk: the forward CE is the mean over all N*T positions with <unk> as the last target, the
    last position's g is non-zero (exactly zero with ignore), and loss and inverse CE equal a per-sequence
    reference that includes that term."""
    ids = _ids()
    cfg = objective(grad_scale_tokens=1.0, mask_fraction=0.25, last_target="unk")
    protocol, _ = parse_variant(variant)
    out = compute_objective(tiny, ids, variant, cfg, generator=_gen())
    positions = draw_mask_positions(*ids.shape, cfg.mask_fraction, _gen()) if protocol == "bert_like" else None
    logits, targets = reference.inverse_rows(tiny, ids, protocol, False, 1.0, positions, last_unk=True)
    expected_inv = reference.cross_entropy(logits, targets)
    torch.testing.assert_close(out.inv_ce, expected_inv, **TOL)
    inputs = ids.clone()
    if protocol == "inv_first":  # its L_fwd comes from the pass with <s> at position 0 (§1.7)
        inputs[:, 0] = BOS_ID
    with torch.no_grad():
        nll = torch.cat([reference.sequence_nll(tiny(input_ids=inp[None]).logits[0], row, last_unk=True)
                         for inp, row in zip(inputs, ids)])
    assert nll.numel() == ids.numel()  # N*T terms, the paper's L_fwd
    torch.testing.assert_close(out.ce, nll.mean(), **TOL)  # Bert-like's L_fwd is its clean pass
    torch.testing.assert_close(out.loss.detach(), cfg.lambda_ce * nll.mean() + cfg.lambda_inv * expected_inv, **TOL)
    g_unk = inverse_rows(tiny, ids, "identity", cfg).g.view(3, 10, -1)[:, -1]  # (N, d) at the last position
    g_ignore = inverse_rows(tiny, ids, "identity", objective(grad_scale_tokens=1.0)).g.view(3, 10, -1)[:, -1]
    assert g_unk.abs().amax(-1).min() > 0 and torch.count_nonzero(g_ignore) == 0
    tiny.zero_grad(set_to_none=True)


@pytest.mark.parametrize(
    "placeholder,trained", [("pad_frozen", False), ("pad_trainable", True), ("mask", True), ("paper_int3", False)]
)
def test_placeholder_row_is_trained_unless_frozen(placeholder, trained):
    """Through its lookup, the placeholder's embedding row gets gradient from the Bert-like inverse loss, except
    the paper's frozen <pad> (HF's padding_idx row, zero at init); a trainable <pad> starts as an ordinary
    initialised row. lambda_ce = 0 and a constant g leave the lookup as the only path into E (the tied head
    would otherwise reach every row)."""
    cfg = objective(lambda_ce=0.0, grad_scale_tokens=1.0, mask_fraction=0.25, mask_placeholder=placeholder)
    torch.manual_seed(0)
    model = build_model(tiny_model_config(), frozen_pad_row=cfg.frozen_pad_row).double()
    row = model.model.embed_tokens.weight[cfg.placeholder_id]
    assert (row.abs().max() > 0) == (placeholder not in ("pad_frozen", "paper_int3"))
    ids = _ids().clamp(min=6)  # no special token among the inputs: only the mask puts the placeholder there
    compute_objective(model, ids, "bert_like", cfg, generator=_gen(), create_graph=False).loss.backward()
    grad = model.model.embed_tokens.weight.grad[cfg.placeholder_id]
    assert (grad.abs().max() > 0) == trained


def test_topk_counts_ties_and_nan_against_the_target():
    """A row of equal logits is never correct, whatever its target's id; neither is a NaN row."""
    logits = torch.zeros(4, 16)
    targets = torch.tensor([0, 1, 5, 15])
    assert topk_correct(logits, targets, (1, 5, 15, 16))[15].item() == 0
    assert topk_correct(logits, targets, (16,))[16].item() == 4  # every tie is still within all 16
    nan = torch.full((2, 16), float("nan"))
    assert topk_correct(nan, torch.tensor([0, 3]), (1, 5))[5].item() == 0


# ---- bookkeeping -----------------------------------------------------------------------------------


@pytest.mark.parametrize("t,fraction,k", [(10, 0.1, 1), (10, 0.25, 2), (12, 0.05, 1), (256, 0.1, 25), (8, 1.0, 8)])
def test_bert_like_mask_positions(t, fraction, k):
    """Exactly k = max(1, floor(f*T)) distinct in-range positions per sequence, reproducible by seed."""
    assert mask_count(t, fraction) == k
    positions = draw_mask_positions(4, t, fraction, _gen())
    assert positions.shape == (4, k)
    for row in positions:
        assert len(set(row.tolist())) == k and 0 <= row.min() and row.max() < t
    assert torch.equal(positions, draw_mask_positions(4, t, fraction, _gen()))


def test_bert_like_mask_positions_cover_every_position():
    """The draw is uniform enough that every position, the first and last included, gets chosen."""
    positions = draw_mask_positions(400, 10, 0.1, _gen())
    counts = torch.bincount(positions.flatten(), minlength=10)
    assert counts.min() > 20


def test_apply_mask_puts_pad_only_at_positions():
    """The masked copy has <pad> at the drawn positions, the original tokens elsewhere, and is a copy."""
    ids = _ids(vocab=VOCAB - 8) + 8  # no <pad> to begin with
    before = ids.clone()
    positions = draw_mask_positions(3, 10, 0.3, _gen())
    masked = apply_mask(ids, positions)
    assert torch.equal(ids, before)
    is_pad = masked == PAD_ID
    assert is_pad.sum() == 9 and is_pad.gather(1, positions).all()
    assert torch.equal(masked[~is_pad], ids[~is_pad])


@pytest.mark.parametrize("variant", VARIANTS)
def test_caller_input_ids_never_modified(tiny, variant):
    """No variant writes into the caller's input_ids (Inv-First and Bert-like work on copies)."""
    ids = _ids()
    before = ids.clone()
    compute_objective(tiny, ids, variant, objective(), generator=_gen())
    assert torch.equal(ids, before)


def test_unknown_variant_names_valid_ones(tiny):
    """An unknown variant raises ValueError listing every valid variant."""
    with pytest.raises(ValueError, match="identity_grad.*inv_first_grad"):
        parse_variant("pag-identity")
    with pytest.raises(ValueError, match="bert_like_grad"):
        compute_objective(tiny, _ids(), "pos-bert-like", objective())
    with pytest.raises(ValueError, match="inv_first"):
        inverse_logits(tiny, _ids(), "inv-first", False, objective())


def test_parse_variant_table():
    """Variants map to (protocol, gradient_only) in the documented order."""
    assert VARIANTS == (
        "base", "identity", "bert_like", "inv_first", "identity_grad", "bert_like_grad", "inv_first_grad"
    )
    assert [parse_variant(v) for v in VARIANTS] == [
        (None, False), ("identity", False), ("bert_like", False), ("inv_first", False),
        ("identity", True), ("bert_like", True), ("inv_first", True),
    ]


def test_objective_config_from_dict():
    """from_dict takes the config section, fills defaults, and names bad keys and values."""
    objective = load_config(REPO / "config.yaml")["objective"]
    assert ObjectiveConfig.from_dict(objective) == ObjectiveConfig.from_dict({})
    assert ObjectiveConfig.from_dict({"lambda_inv": 2}).lambda_inv == 2.0
    with pytest.raises(ValueError, match="objective.lambda_pag"):
        ObjectiveConfig.from_dict({"lambda_pag": 0.5})
    with pytest.raises(ValueError, match="objective.mask_fraction"):
        ObjectiveConfig.from_dict({"mask_fraction": 0.0})


@pytest.mark.parametrize("variant", VARIANTS)
def test_total_loss_combines_terms(tiny, variant):
    """loss = lambda_ce * clean forward CE + lambda_inv * inverse CE; base has no inverse term."""
    cfg = objective(lambda_ce=0.7, lambda_inv=1.9)
    ids = _ids()
    out = compute_objective(tiny, ids, variant, cfg, generator=_gen())
    protocol, _ = parse_variant(variant)
    fwd_ids = ids.clone()
    if protocol == "inv_first":
        fwd_ids[:, 0] = BOS_ID
    clean = forward_ce(tiny, tiny.model.embed_tokens(fwd_ids), ids[:, 1:]).detach()
    torch.testing.assert_close(out.ce, clean, **TOL)
    if protocol is None:
        assert out.inv_ce is None and out.inv_rows == 0 and out.inv_correct == {}
        torch.testing.assert_close(out.loss.detach(), 0.7 * clean, **TOL)
    else:
        torch.testing.assert_close(out.loss.detach(), 0.7 * clean + 1.9 * out.inv_ce, **TOL)
        assert out.inv_rows == {"identity": 30, "bert_like": 3, "inv_first": 3}[protocol]
    tiny.zero_grad(set_to_none=True)


def test_bert_like_inverse_pass_ce_is_the_masked_one(tiny):
    """inverse_logits' CE for Bert-like is the masked pass's, unlike compute_objective's clean CE."""
    cfg = objective(mask_fraction=0.3)
    ids = _ids()
    masked_ce, _, targets = inverse_logits(tiny, ids, "bert_like", False, cfg, generator=_gen())
    masked = apply_mask(ids, draw_mask_positions(3, 10, 0.3, _gen()))
    torch.testing.assert_close(masked_ce, forward_ce(tiny, tiny.model.embed_tokens(masked), ids[:, 1:]), **TOL)
    assert targets.shape == (9,)


@pytest.mark.parametrize("variant", ["identity", "bert_like", "inv_first_grad"])
def test_evaluation_under_no_grad(tiny, variant):
    """Under no_grad the objective still computes g, returns detached tensors and leaves .grad untouched."""
    cfg = objective()
    ids = _ids()
    tiny.zero_grad(set_to_none=True)
    expected = compute_objective(tiny, ids, variant, cfg, generator=_gen(), create_graph=False)
    with torch.no_grad():
        out = compute_objective(tiny, ids, variant, cfg, generator=_gen(), create_graph=False)
        _, logits, _ = inverse_logits(tiny, ids, parse_variant(variant)[0], False, cfg, generator=_gen())
    assert not out.loss.requires_grad and not logits.requires_grad
    assert all(p.grad is None for p in tiny.parameters())
    torch.testing.assert_close(out.inv_ce, expected.inv_ce, **TOL)
    torch.testing.assert_close(out.loss, expected.loss.detach(), **TOL)


def test_topk_correct_is_sorted():
    """top-k counts equal a rank computation for every k (the paper's unsorted top-k was wrong)."""
    logits = torch.randn(200, 16, generator=_gen(11))
    targets = torch.randint(0, 16, (200,), generator=_gen(12))
    rank = (logits > logits.gather(1, targets[:, None])).sum(1)  # 0 = the largest
    counts = topk_correct(logits, targets, (1, 2, 3, 5, 16))
    for k, c in counts.items():
        assert c.item() == (rank < k).sum().item()
    assert counts[16].item() == 200
    assert topk_correct(logits, targets, ()) == {}


def test_paper_model_parameter_count():
    """config.yaml's model has the paper's 2,492,160 parameters (docs/method.md §2.1)."""
    model = build_model(load_config(REPO / "config.yaml")["model"])
    assert count_parameters(model) == 2_492_160
    assert model.config._attn_implementation == "eager"
    assert math.isclose(model.config.rms_norm_eps, 1e-6)
