"""Counter-based random numbers: Philox4x32-10 (Salmon et al., SC 2011) on torch integer tensors.

A counter-based generator has no state: the random words for counter c under key k are a fixed
function philox(c, k), so any draw can be computed on any device, for many keys at once, in one
batched call, and gives the same bits wherever and in whatever batch it is computed. GCG keys
one stream per sample with (gcg.seed, sample seed) and counts its draws by (index, step, stream).

The 32-bit words are held in int64 tensors with values in [0, 2^32); the 32x32 -> 64-bit products
of a round are split into 16-bit halves so no intermediate leaves int64 (signed overflow is never
relied on). The known-answer vectors of the Random123 reference are checked in tests/test_philox.py.
"""

from __future__ import annotations

import numpy as np
import torch

MASK32 = 0xFFFFFFFF
ROUNDS = 10
# Philox4x32 multipliers and Weyl key increments (Random123 `philox.h`).
M0, M1 = 0xD2511F53, 0xCD9E8D57
W0, W1 = 0x9E3779B9, 0xBB67AE85


def _mulhilo(a: int, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(hi, lo) 32-bit halves of the 64-bit product a * b, for a 32-bit constant a and words b."""
    t = a * (b >> 16)  # < 2^48
    s = a * (b & 0xFFFF) + ((t & 0xFFFF) << 16)  # < 2^49: the product's low 49 bits
    return (t >> 16) + (s >> 32), s & MASK32


def philox4x32(counter: torch.Tensor, key: torch.Tensor) -> torch.Tensor:
    """(..., 4) random 32-bit words (int64 in [0, 2^32)) for int64 counters (..., 4) under keys (..., 2).

    counter and key broadcast against each other; every value must lie in [0, 2^32).
    """
    c0, c1, c2, c3 = counter.unbind(-1)
    k0, k1 = key.unbind(-1)
    for r in range(ROUNDS):
        if r:
            k0, k1 = (k0 + W0) & MASK32, (k1 + W1) & MASK32
        hi0, lo0 = _mulhilo(M0, c0)
        hi1, lo1 = _mulhilo(M1, c2)
        c0, c1, c2, c3 = hi1 ^ c1 ^ k0, lo1, hi0 ^ c3 ^ k1, lo0
    return torch.stack(torch.broadcast_tensors(c0, c1, c2, c3), dim=-1)


def below(words: torch.Tensor, n) -> torch.Tensor:
    """Integers in [0, n) from 32-bit words by multiply-shift (bias below n / 2^32); n an int or int64 tensor < 2^31."""
    return (words * n) >> 32


def stream_keys(base_seed: int, stream_seeds) -> torch.Tensor:
    """(S, 2) int64 Philox keys, one per stream, mixed from (base_seed, stream seed) by NumPy's SeedSequence."""
    rows = [np.random.SeedSequence([int(base_seed), int(s)]).generate_state(2, dtype=np.uint32) for s in stream_seeds]
    return torch.as_tensor(np.asarray(rows, dtype=np.int64).reshape(-1, 2))
