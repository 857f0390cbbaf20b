"""The GCG attack engine (docs/method.md §4.2) on tiny CPU models with fixed seeds."""

from __future__ import annotations

import dataclasses
import math

import pytest
import scipy.stats
import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode

import ilm.gcg
from ilm.config import load_config
from ilm.gcg import (
    GCGConfig,
    allowed_token_ids,
    candidate_losses,
    initial_prefix,
    prefix_gradient,
    prefix_loss_and_gradient,
    run,
    sample_candidates,
    sample_keys,
    uniform_candidates,
    use_sdpa_attention,
    top_k_substitutions,
)
from ilm.names import SPECIAL_TOKENS
from nosync import HostSyncError, forbid_host_sync
from tiny import VOCAB as V
from tiny import tiny_model

P, L = 6, 4


def random_ids(shape, seed: int, high: int = V) -> torch.Tensor:
    return torch.randint(high, shape, generator=torch.Generator().manual_seed(seed))


def config(**overrides) -> GCGConfig:
    base = dict(
        prefix_length=P,
        target_length=L,
        steps=6,
        search_width=24,
        top_k=8,
        max_candidates_per_forward=1000,
        precision="fp32",
    )
    return GCGConfig.from_dict({**base, **overrides})


def reference_loss(model, prefix: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean target CE from a plain full-sequence HF forward: logit t-1 predicts token t."""
    ids = torch.cat([prefix, target], dim=1)
    logits = model(input_ids=ids).logits  # (N, P+L, V)
    pred = logits[:, prefix.shape[1] - 1 : -1]  # (N, L, V)
    return F.cross_entropy(pred.transpose(1, 2), target, reduction="none").mean(1)


def same_result(a, b) -> bool:
    """Whether two GCGResults are equal field for field (nan equal to nan), wall-clock aside."""
    x, y = dataclasses.asdict(dataclasses.replace(a, seconds=0)), dataclasses.asdict(dataclasses.replace(b, seconds=0))
    nan = [k for k, v in x.items() if isinstance(v, float) and math.isnan(v)]
    return nan == [k for k, v in y.items() if isinstance(v, float) and math.isnan(v)] and all(
        x[k] == y[k] for k in x if k not in nan
    )


def test_config_from_paper_yaml():
    """GCGConfig takes the paper's values from config.yaml's gcg section and ignores the other keys."""
    cfg = GCGConfig.from_dict(load_config()["gcg"])
    assert (cfg.prefix_length, cfg.target_length, cfg.steps, cfg.search_width, cfg.top_k, cfg.seed) == (
        20,
        10,
        500,
        4096,
        256,
        444,
    )
    assert cfg.candidates == "gradient"
    with pytest.raises(ValueError, match="gcg.precision"):
        GCGConfig.from_dict({"precision": "fp8"})
    with pytest.raises(ValueError, match="gcg.candidates"):
        GCGConfig.from_dict({"candidates": "random"})


def test_trajectory_never_increases_and_ends_at_attack_loss():
    """The best-so-far trajectory is non-increasing, has one entry per step and ends at the best attack's loss."""
    model = tiny_model()
    prefix, target = random_ids((3, P), 1), random_ids((3, L), 2)
    results = run(model, prefix, target, config(steps=10), sample_seeds=[0, 1, 2])
    with torch.no_grad():
        attack = torch.tensor([r.attack_ids for r in results])
        ref_attack = reference_loss(model, attack, target)
        ref_orig = reference_loss(model, prefix, target)
    for i, r in enumerate(results):
        traj = torch.tensor(r.trajectory)
        assert len(traj) == 10 and len(r.attack_ids) == P
        assert torch.all(traj[1:] <= traj[:-1])
        assert r.trajectory[-1] == r.attack_loss == r.trajectory[r.best_step]
        assert r.best_step == 0 or r.trajectory[r.best_step - 1] > r.attack_loss
        assert r.attack_loss == pytest.approx(float(ref_attack[i]), abs=1e-5)
        assert r.orig_loss == pytest.approx(float(ref_orig[i]), abs=1e-5)
        assert r.kl >= 0 and r.seconds > 0


def test_kl_is_the_mean_over_target_positions_of_kl_orig_to_attack():
    """kl = mean over target positions of sum_v p_orig (log p_orig - log p_attack), by hand in float64."""
    model = tiny_model(seed=3, dtype=torch.float64)
    prefix, target = random_ids((2, P), 4), random_ids((2, L), 5)
    results = run(model, prefix, target, config(steps=4), sample_seeds=[0, 1])
    attack = torch.tensor([r.attack_ids for r in results])
    with torch.no_grad():
        def target_logp(pre):  # (S, L, V): position t-1 predicts target token t
            return torch.log_softmax(model(input_ids=torch.cat([pre, target], 1)).logits[:, P - 1 : -1], -1)

        lp, lq = target_logp(prefix), target_logp(attack)
        kl = (lp.exp() * (lp - lq)).sum(-1).mean(-1)  # (S,)
        reverse = (lq.exp() * (lq - lp)).sum(-1).mean(-1)
    for i, r in enumerate(results):
        assert r.kl == pytest.approx(float(kl[i]), rel=1e-9, abs=1e-12)
        # The check bites: the reversed KL, and a sum over positions, differ far beyond the tolerance.
        assert float(reverse[i]) != pytest.approx(float(kl[i]), rel=1e-6)
        assert float(kl[i]) * L != pytest.approx(float(kl[i]), rel=1e-6)


def test_candidates_substitute_one_top_k_token():
    """A candidate differs from the current prefix only at its drawn position, by a token of that position's top-k."""
    S, K, W = 2, 5, 400
    current = random_ids((S, P), 3, high=10)
    # Top-k tokens >= 10 never equal a current token, so every candidate differs in exactly one place.
    top = 10 + random_ids((S, P, K), 4, high=V - 10)
    keys = sample_keys(444, range(S))
    cands = sample_candidates(current, top, W, keys, step=3)
    assert cands.ids.shape == (S, W, P)
    changed = cands.ids != current[:, None, :]  # (S, W, P)
    assert torch.all(changed.sum(-1) == 1)
    assert torch.equal(changed.float().argmax(-1), cands.positions)
    picked = cands.ids.gather(2, cands.positions[..., None]).squeeze(-1)
    assert torch.equal(picked, cands.tokens)
    allowed = top.gather(1, cands.positions[..., None].expand(S, W, K))  # (S, W, K) the drawn position's top-k
    assert torch.all((allowed == cands.tokens[..., None]).any(-1))
    # Uniform draws over 400 candidates reach every position.
    for s in range(S):
        assert set(cands.positions[s].tolist()) == set(range(P))
    again = sample_candidates(current, top, W, sample_keys(444, range(S)), step=3)
    assert torch.equal(again.ids, cands.ids)


def test_sample_streams_depend_on_both_seeds_and_the_step():
    """A sample's candidates depend on gcg.seed, its own sample seed and the step, and on nothing else."""
    current, top = random_ids((1, P), 3), random_ids((1, P, 8), 4)

    def draws(base: int, sample: int, step: int) -> list[int]:
        return sample_candidates(current, top, 16, sample_keys(base, [sample]), step).ids.flatten().tolist()

    assert draws(444, 1, 0) == draws(444, 1, 0)
    assert draws(444, 1, 0) != draws(444, 2, 0)
    assert draws(444, 1, 0) != draws(445, 1, 0)
    assert draws(444, 1, 0) != draws(444, 1, 1)
    # In a batch, a sample's rows are exactly its draws alone (integer arithmetic: bit for bit).
    batch = sample_candidates(current.expand(3, P), top.expand(3, P, 8), 16, sample_keys(444, [7, 1, 9]), 0)
    assert batch.ids[1].flatten().tolist() == draws(444, 1, 0)


def test_uniform_candidates_substitute_one_allowed_token_uniformly():
    """Uniform candidates change at most one position, to an allowed token; positions and tokens cover their ranges."""
    S, W = 2, 3000
    current = random_ids((S, P), 35)
    allowed = allowed_token_ids(V, allow_special_tokens=False)
    cands = uniform_candidates(current, allowed, W, sample_keys(444, [4, 11]), step=2)
    assert cands.ids.shape == (S, W, P)
    changed = cands.ids != current[:, None, :]  # (S, W, P)
    assert torch.all(changed.sum(-1) <= 1)  # a drawn token may equal the current one: a no-op
    assert torch.all(changed.float().argmax(-1)[changed.any(-1)] == cands.positions[changed.any(-1)])
    assert torch.equal(cands.ids.gather(2, cands.positions[..., None]).squeeze(-1), cands.tokens)
    assert torch.all(cands.tokens >= len(SPECIAL_TOKENS)) and torch.all(cands.tokens < V)
    for s in range(S):  # 3000 draws: each position ~500 times, each of the 58 tokens ~50 times
        assert set(cands.positions[s].tolist()) == set(range(P))
        assert set(cands.tokens[s].tolist()) == set(allowed.tolist())
    # A sample's draws are the same alone, and never the gradient mode's draws for the same key and step.
    alone = uniform_candidates(current[1:], allowed, W, sample_keys(444, [11]), step=2)
    assert torch.equal(alone.ids[0], cands.ids[1])
    top = allowed[None, None, :].expand(S, P, len(allowed))  # top-k = every allowed token: the same ranges
    gradient = sample_candidates(current, top, W, sample_keys(444, [4, 11]), step=2)
    assert (gradient.positions != cands.positions).float().mean() > 0.5


def test_gradient_mode_draws_and_results_are_unchanged():
    """Gradient-mode candidates and attacks equal those computed before gcg.candidates existed (pinned values)."""
    current, top = random_ids((2, P), 43), random_ids((2, P, 8), 44)
    cands = sample_candidates(current, top, 10, sample_keys(444, [3, 8]), 2)
    assert cands.positions.tolist() == [[1, 1, 0, 0, 5, 1, 0, 4, 3, 5], [5, 2, 2, 0, 1, 4, 1, 4, 2, 4]]
    assert cands.tokens.tolist() == [
        [56, 23, 59, 3, 58, 55, 59, 21, 57, 8],
        [40, 56, 34, 51, 1, 59, 11, 43, 34, 17],
    ]
    model = tiny_model(seed=40).double()
    results = run(model, random_ids((2, P), 41), random_ids((2, L), 42), config(steps=5), [3, 8])
    # float64 on this machine: bit for bit; 1e-12 leaves room for another CPU's BLAS.
    expected = [
        ([41, 21, 41, 41, 41, 38], 4, [4.075594863676017, 4.070696512676422, 4.06639849629024, 4.063022123352292,
                                       4.0616537114828155], 4.106525188409224, 0.001087679144162582),
        ([57, 22, 13, 23, 27, 39], 4, [4.144889448148561, 4.1408777652619335, 4.137856017328946, 4.135950430741111,
                                       4.134704366789951], 4.199571759970461, 0.0015773198524949316),
    ]
    for r, (ids, best, traj, orig, kl) in zip(results, expected):
        assert r.attack_ids == ids and r.best_step == best
        assert r.trajectory == pytest.approx(traj, rel=1e-12, abs=0)
        assert (r.orig_loss, r.kl) == pytest.approx((orig, kl), rel=1e-12, abs=0)


def test_uniform_mode_draws_and_results_are_unchanged():
    """Uniform-mode draws and every result field but rank_correlation equal those of the gradient-free code (pinned)."""
    current = random_ids((2, P), 43)
    cands = uniform_candidates(current, allowed_token_ids(V, False), 10, sample_keys(444, [3, 8]), 2)
    assert cands.positions.tolist() == [[3, 0, 3, 5, 3, 2, 5, 0, 2, 1], [0, 1, 4, 5, 1, 5, 1, 3, 1, 0]]
    assert cands.tokens.tolist() == [
        [63, 12, 42, 55, 47, 23, 24, 53, 13, 60],
        [16, 52, 20, 20, 43, 47, 48, 19, 16, 60],
    ]
    model = tiny_model(seed=40).double()
    cfg = config(steps=5, candidates="uniform")
    results = run(model, random_ids((2, P), 41), random_ids((2, L), 42), cfg, [3, 8])
    # Computed before the uniform mode took the gradient; float64: bit for bit here, 1e-12 for another CPU's BLAS.
    expected = [
        ([58, 21, 40, 6, 32, 20], 4, [4.126016723225364, 4.123348521571226, 4.109875286185926, 4.104960409584586,
                                      4.1023950436020655], 4.106525188409224, 0.0021692373853805227, 4.152110876248103),
        ([43, 23, 13, 5, 27, 42], 4, [4.160492284832076, 4.1564018236192, 4.15303645147595, 4.1023293935024085,
                                      4.101550498243424], 4.199571759970461, 0.001492502318198683, 4.201584083453469),
    ]
    for r, (ids, best, traj, orig, kl, init) in zip(results, expected):
        assert r.attack_ids == ids and r.best_step == best
        assert r.trajectory == pytest.approx(traj, rel=1e-12, abs=0)
        assert (r.orig_loss, r.kl, r.init_loss) == pytest.approx((orig, kl, init), rel=1e-12, abs=0)
        assert -1 <= r.rank_correlation <= 1


def test_uniform_candidates_never_depend_on_the_gradient(monkeypatch):
    """Uniform candidates ignore the gradient: no top-k, top_k unused; a noise gradient alters only rank_correlation."""

    def refuse(*args, **kwargs):
        raise AssertionError("a gradient-guided candidate was drawn under gcg.candidates: uniform")

    for name in ("top_k_substitutions", "sample_candidates"):
        monkeypatch.setattr(ilm.gcg, name, refuse)
    model = tiny_model(seed=36)
    prefix, target = random_ids((2, P), 37), random_ids((2, L), 38)
    cfg = config(steps=4, candidates="uniform", top_k=V, allow_special_tokens=False)  # top_k > allowed: unused
    real = run(model, prefix, target, cfg, [0, 1])
    real_gradient, noise = ilm.gcg.prefix_loss_and_gradient, torch.Generator().manual_seed(0)

    def noise_gradient(*args, **kwargs):
        loss, grad = real_gradient(*args, **kwargs)
        return loss, torch.randn(grad.shape, generator=noise, dtype=grad.dtype)

    monkeypatch.setattr(ilm.gcg, "prefix_loss_and_gradient", noise_gradient)
    noisy = run(model, prefix, target, cfg, [0, 1])
    for r, n in zip(real, noisy):
        assert r.rank_correlation != n.rank_correlation  # the gradient was used, for the measure only
        assert same_result(r, dataclasses.replace(n, rank_correlation=r.rank_correlation))
        assert r.trajectory[-1] == r.attack_loss and all(b <= a for a, b in zip(r.trajectory, r.trajectory[1:]))
        assert min(r.attack_ids) >= len(SPECIAL_TOKENS)


@pytest.mark.parametrize("candidates", ["gradient", "uniform"])
def test_init_loss_is_the_ce_of_the_initial_prefix(candidates):
    """init_loss equals the plain-forward target CE of initial_prefix under the same keys (to 1e-5)."""
    model = tiny_model(seed=39)
    prefix, target = random_ids((3, P), 40), random_ids((3, L), 41)
    results = run(model, prefix, target, config(steps=2, seed=7, candidates=candidates), [2, 5, 6])
    init = initial_prefix(sample_keys(7, [2, 5, 6]), P, allowed_token_ids(V, True))  # (S, P)
    with torch.no_grad():
        expected = reference_loss(model, init, target)
    for r, e in zip(results, expected):
        assert r.init_loss == pytest.approx(float(e), abs=1e-5)
        assert r.init_loss != pytest.approx(r.orig_loss, abs=1e-3)  # the random start, not the original prefix


@pytest.mark.parametrize("candidates", ["gradient", "uniform"])
def test_rank_correlation_matches_scipy_on_one_step(candidates):
    """One step's rank_correlation = scipy's Spearman of plain-forward loss changes vs autograd predictions."""
    model = tiny_model(seed=42).double()
    S, W, K = 3, 40, 16
    prefix, target = random_ids((S, P), 43), random_ids((S, L), 44)
    cfg = config(steps=1, search_width=W, top_k=K, seed=9, candidates=candidates)
    results = run(model, prefix, target, cfg, [1, 4, 8])
    keys = sample_keys(9, [1, 4, 8])
    init = initial_prefix(keys, P, allowed_token_ids(V, True))  # (S, P)
    weight = model.get_input_embeddings().weight  # (V, H)
    for s, r in enumerate(results):
        one_hot = F.one_hot(init[s], V).double().requires_grad_(True)  # (P, V)
        embeds = torch.cat([one_hot @ weight, weight[target[s]]])[None]  # (1, P+L, H)
        logits = model(inputs_embeds=embeds).logits[0, P - 1 : -1]  # (L, V)
        loss = F.cross_entropy(logits, target[s])
        (grad,) = torch.autograd.grad(loss, one_hot)  # (P, V) unnormalised
        if candidates == "uniform":  # the candidates the search drew, independent of the gradient
            cands = uniform_candidates(init[s : s + 1], allowed_token_ids(V, True), W, keys[s : s + 1], 0)
        else:
            cands = sample_candidates(init[s : s + 1], top_k_substitutions(grad[None], K), W, keys[s : s + 1], 0)
        pos, tok = cands.positions[0], cands.tokens[0]  # (W,)
        with torch.no_grad():
            actual = reference_loss(model, cands.ids[0], target[s].expand(W, L)) - loss
        predicted = grad[pos, tok] - grad[pos, init[s, pos]]
        rho = scipy.stats.spearmanr(actual.detach().numpy(), predicted.detach().numpy()).statistic
        assert r.rank_correlation == pytest.approx(rho, abs=1e-9)
        assert math.isfinite(rho)


@pytest.mark.parametrize("candidates, top_k", [("gradient", V), ("uniform", 8)])
def test_rank_correlation_is_positive_without_top_k_restriction(candidates, top_k):
    """The gradient ranks unrestricted (top_k = V) or uniform candidates well from random starts: mean > 0.3."""
    model = tiny_model(seed=45)
    prefix, target = random_ids((8, P), 46), random_ids((8, L), 47)
    cfg = config(steps=2, search_width=64, top_k=top_k, candidates=candidates)  # uniform ignores top_k
    results = run(model, prefix, target, cfg, range(8))
    rhos = [r.rank_correlation for r in results]
    assert all(-1 <= x <= 1 for x in rhos) and sum(rhos) / len(rhos) > 0.3


def test_top_k_takes_most_negative_and_skips_banned():
    """Top-k takes the most negative normalised gradient, skips banned ids and treats NaN as 0."""
    grad = torch.zeros(1, 2, 8)
    grad[0, 0] = torch.tensor([5.0, -1.0, -3.0, 0.5, -2.0, 1.0, 2.0, 3.0])
    grad[0, 1] = torch.tensor([-9.0, float("nan"), 1.0, 1.0, -0.5, 1.0, 1.0, 1.0])
    top = top_k_substitutions(grad, 3)
    assert top[0, 0].tolist() == [2, 4, 1]
    assert top[0, 1, :2].tolist() == [0, 4] and int(top[0, 1, 2]) == 1  # NaN became 0, the next smallest
    banned = top_k_substitutions(grad, 3, banned=torch.tensor([2, 0]))
    assert banned[0, 0].tolist() == [4, 1, 3]
    assert 0 not in banned[0, 1].tolist()


def test_prefix_gradient_matches_embedding_gradient():
    """The one-hot gradient equals the input-embedding gradient of a plain HF forward times E^T."""
    model = tiny_model(seed=5).double()
    prefix, target = random_ids((2, P), 6), random_ids((2, L), 7)
    emb = model.get_input_embeddings()
    grad = prefix_gradient(model, prefix, target, emb(target).detach(), "fp32")  # (S, P, V)
    x = emb(torch.cat([prefix, target], 1)).detach().requires_grad_(True)
    logits = model(inputs_embeds=x).logits[:, P - 1 : -1]
    loss = F.cross_entropy(logits.transpose(1, 2), target, reduction="none").mean(1).sum()
    (gx,) = torch.autograd.grad(loss, x)
    expected = gx[:, :P] @ emb.weight.T  # (S, P, V)
    torch.testing.assert_close(grad, expected, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("chunk", [1000, 7])
def test_candidate_losses_match_plain_forward(chunk):
    """Batched, chunked candidate losses (LM head on target positions only) equal full-logit per-sequence CE."""
    model = tiny_model(seed=8)
    S, W = 2, 9
    cands = random_ids((S, W, P), 9)
    target = random_ids((S, L), 10)
    got = candidate_losses(model, cands, target, max_per_forward=chunk)  # (S, W)
    with torch.no_grad():
        for s in range(S):
            for w in range(W):
                ref = reference_loss(model, cands[s, w][None], target[s][None])
                assert float(got[s, w]) == pytest.approx(float(ref), abs=1e-5)


def test_sdpa_attention_gives_the_eager_losses():
    """Switching the attack model to SDPA attention leaves candidate losses unchanged (to 1e-5)."""
    model = tiny_model(seed=21)
    cands, target = random_ids((2, 5, P), 22), random_ids((2, L), 23)
    eager = candidate_losses(model, cands, target, max_per_forward=100)
    fast = candidate_losses(use_sdpa_attention(model), cands, target, max_per_forward=100)
    assert model.config._attn_implementation == "sdpa"
    torch.testing.assert_close(fast, eager, rtol=0, atol=1e-5)


@pytest.mark.parametrize("candidates", ["gradient", "uniform"])
def test_batch_independence_float64(candidates):
    """A sample's attack is the same alone or among others and for any chunk size, in both modes (float64, to 1e-9)."""
    model = tiny_model(seed=11).double()
    prefix, target = random_ids((3, P), 12), random_ids((3, L), 13)
    cfg = config(steps=8, candidates=candidates)
    together = run(model, prefix, target, cfg, sample_seeds=[5, 9, 14])
    alone = run(model, prefix[1:2], target[1:2], dataclasses.replace(cfg, max_candidates_per_forward=7), [9])[0]
    mate = together[1]
    assert mate.attack_ids == alone.attack_ids and mate.best_step == alone.best_step
    assert max(abs(a - b) for a, b in zip(mate.trajectory, alone.trajectory)) < 1e-9
    for key in ("orig_loss", "attack_loss", "kl", "init_loss", "rank_correlation"):
        assert abs(getattr(mate, key) - getattr(alone, key)) < 1e-9
    # Different samples draw from different streams.
    assert together[0].attack_ids != together[2].attack_ids


def test_bf16_on_cpu_runs_fp32():
    """precision bf16 only autocasts on CUDA: on CPU it gives exactly the fp32 result."""
    model = tiny_model(seed=15)
    prefix, target = random_ids((1, P), 16), random_ids((1, L), 17)
    a = run(model, prefix, target, config(steps=3, precision="bf16"), [0])[0]
    b = run(model, prefix, target, config(steps=3, precision="fp32"), [0])[0]
    assert dataclasses.replace(a, seconds=0) == dataclasses.replace(b, seconds=0)


def test_special_tokens_excluded_when_disallowed():
    """Without special tokens no attack uses ids 0-5, and a top_k above the allowed count is refused."""
    model = tiny_model(seed=18)
    prefix, target = random_ids((4, P), 19), random_ids((4, L), 20)
    cfg = config(steps=5, top_k=V - len(SPECIAL_TOKENS), allow_special_tokens=False)
    for r in run(model, prefix, target, cfg, [0, 1, 2, 3]):
        assert min(r.attack_ids) >= len(SPECIAL_TOKENS)
    with pytest.raises(ValueError, match="gcg.top_k"):
        run(model, prefix, target, config(top_k=V - 1, allow_special_tokens=False), [0, 1, 2, 3])


def test_bad_shapes_are_refused():
    """Prefixes or targets of the wrong length, or a missing seed, raise ValueError naming the setting."""
    model = tiny_model()
    with pytest.raises(ValueError, match="gcg.prefix_length"):
        run(model, random_ids((1, P + 1), 0), random_ids((1, L), 0), config(), [0])
    with pytest.raises(ValueError, match="gcg.target_length"):
        run(model, random_ids((1, P), 0), random_ids((1, L + 2), 0), config(), [0])
    with pytest.raises(ValueError, match="sample seed"):
        run(model, random_ids((2, P), 0), random_ids((2, L), 0), config(), [0])


def test_attack_finds_trigger_on_memorised_model():
    """On a model that memorised 4 windows, GCG from random inits mostly beats a one-token-corrupted original prefix."""
    vocab, p, t = 32, 4, 4
    model = tiny_model(seed=0, vocab_size=vocab, hidden_size=32, intermediate_size=64, num_attention_heads=4,
                       num_key_value_heads=2, max_position_embeddings=16)
    data = 6 + random_ids((4, p + t), 3, high=vocab - 6)
    opt = torch.optim.Adam(model.parameters(), lr=3e-2)
    model.train()
    for _ in range(60):
        loss = model(input_ids=data, labels=data).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    assert loss.item() < 0.01, "the model did not memorise its windows"
    orig = data[:, :p].clone()
    orig[:, -1] = 6 + (orig[:, -1] - 6 + 7) % (vocab - 6)  # the last prefix token drives the target most
    cfg = GCGConfig.from_dict(dict(prefix_length=p, target_length=t, steps=20, search_width=64, top_k=16,
                                   precision="fp32"))
    # Each window attacked from 8 random inits: one attack in ~5 stalls above 0.1x its original loss
    # whatever the random stream (measured over 60 seeds), so the test holds rates, not one lucky draw.
    reps = 8
    results = run(model, orig.repeat(reps, 1), data[:, p:].repeat(reps, 1), cfg, sample_seeds=range(4 * reps))
    assert all(r.orig_loss > 1.0 for r in results)  # the corruption broke the memorised continuation
    assert all(r.trajectory[0] > r.attack_loss for r in results)  # the search improved after its first step
    ratios = sorted(r.attack_loss / r.orig_loss for r in results)
    assert sum(x <= 1 for x in ratios) >= 0.75 * len(ratios)  # successful attacks (attack loss <= original)
    assert sum(x < 0.1 for x in ratios) >= 0.5 * len(ratios)
    assert ratios[len(ratios) // 2] < 0.05


@pytest.mark.parametrize(
    "sync",
    [
        lambda t: t.sum().item(),
        lambda t: t.tolist(),
        lambda t: bool(t.sum() > 0),
        lambda t: t.nonzero(),
        lambda t: t[t > 3],
        lambda t: t.cpu(),
        lambda t: F.one_hot(t, 16),  # on CPU it reads the ids' min and max inside the kernel
    ],
    ids=["item", "tolist", "bool", "nonzero", "mask-index", "cpu", "one_hot"],
)
def test_sync_guard_catches_host_reads(sync):
    """forbid_host_sync raises on each way a step could wait for the host, including reads inside C++ kernels."""
    t = torch.arange(8)
    with pytest.raises(HostSyncError, match="host synchronisation"):
        with forbid_host_sync():
            sync(t)
    sync(t)  # and the guard is gone afterwards


@pytest.mark.parametrize("candidates", ["gradient", "uniform"])
@pytest.mark.parametrize("attention", ["sdpa", "eager"])
def test_a_step_never_synchronises_with_the_host(monkeypatch, attention, candidates):
    """Every GCG step runs under forbid_host_sync (init, banned ids, chunked candidates) and gives the same result."""
    model = tiny_model(seed=24)
    model.set_attn_implementation(attention)
    prefix, target = random_ids((3, P), 25), random_ids((3, L), 26)
    cfg = config(steps=4, max_candidates_per_forward=10, allow_special_tokens=False, candidates=candidates)
    free = run(model, prefix, target, cfg, [3, 4, 5])
    real_step, steps = ilm.gcg.search_step, []

    def guarded_step(search, state, step):
        with forbid_host_sync():
            real_step(search, state, step)
        steps.append(step)

    monkeypatch.setattr(ilm.gcg, "search_step", guarded_step)
    guarded = run(model, prefix, target, cfg, [3, 4, 5])
    assert steps == [0, 1, 2, 3]
    for a, b in zip(guarded, free):
        assert same_result(a, b)


def test_compile_auto_never_compiles_on_cpu(monkeypatch):
    """gcg.compile auto compiles on CUDA only: on CPU the candidate forward is never handed to torch.compile."""
    assert ilm.gcg.use_compile("auto", torch.device("cuda")) and not ilm.gcg.use_compile("auto", torch.device("cpu"))
    assert ilm.gcg.use_compile(True, torch.device("cpu")) and not ilm.gcg.use_compile(False, torch.device("cuda"))

    def refuse(*args, **kwargs):
        raise AssertionError("torch.compile called on CPU with gcg.compile auto")

    monkeypatch.setattr(ilm.gcg, "_compiled_score_chunk", None)
    monkeypatch.setattr(torch, "compile", refuse)
    model = tiny_model(seed=30)
    run(model, random_ids((2, P), 31), random_ids((2, L), 32), config(steps=2, compile="auto"), [0, 1])
    with pytest.raises(ValueError, match="gcg.compile"):
        config(compile="yes")


def test_compiled_candidate_forward_gives_the_eager_attack(monkeypatch):
    """gcg.compile true runs the candidate forward as one compiled graph and finds the eager attack (CPU, ~15 s)."""
    from torch._dynamo.utils import counters

    real_compile, compiled = torch.compile, []

    def spy(fn, *args, **kwargs):
        compiled.append(fn)
        return real_compile(fn, *args, **kwargs)

    monkeypatch.setattr(ilm.gcg, "_compiled_score_chunk", None)
    monkeypatch.setattr(torch, "compile", spy)
    counters.clear()
    model = use_sdpa_attention(tiny_model(seed=30))
    prefix, target = random_ids((2, P), 33), random_ids((2, L), 34)
    # 2 samples x 24 candidates = one chunk of 48: one shape, one compilation.
    cfg = config(steps=3, max_candidates_per_forward=48)
    eager = run(model, prefix, target, dataclasses.replace(cfg, compile=False), [0, 1])
    fast = run(model, prefix, target, dataclasses.replace(cfg, compile=True), [0, 1])
    assert compiled == [ilm.gcg.score_chunk]
    assert counters["stats"]["unique_graphs"] == 1 and not counters["graph_break"]
    for a, b in zip(fast, eager):
        assert a.attack_ids == b.attack_ids and a.best_step == b.best_step
        assert max(abs(x - y) for x, y in zip(a.trajectory, b.trajectory)) < 1e-5


class _OpCounter(TorchDispatchMode):
    """Records the aten ops dispatched while it is active, leaving out copies that only fix a memory layout."""

    LAYOUT = {"aten.view.default", "aten._unsafe_view.default", "aten.clone.default"}

    def __init__(self):
        super().__init__()
        self.ops: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if str(func) not in self.LAYOUT:
            self.ops.append(str(func))
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("candidates", ["gradient", "uniform"])
def test_a_step_has_no_per_sample_loop(monkeypatch, candidates):
    """A step dispatches the same ops for 1 sample as for 5 (up to layout copies): nothing loops over the samples."""
    model = use_sdpa_attention(tiny_model(seed=27))
    counted: dict[int, list[str]] = {}
    real_step = ilm.gcg.search_step

    def counting_step(search, state, step):
        with _OpCounter() as counter:
            real_step(search, state, step)
        counted.setdefault(len(state.current), counter.ops)

    monkeypatch.setattr(ilm.gcg, "search_step", counting_step)
    for S in (1, 5):
        cfg = config(steps=1, allow_special_tokens=False, candidates=candidates)
        run(model, random_ids((S, P), 28), random_ids((S, L), 29), cfg, range(S))
    assert len(counted[1]) > 50 and counted[1] == counted[5]
