"""The counter-based generator behind GCG's draws (ilm.philox): exact Philox4x32-10, uniform bounded integers."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ilm.philox import below, philox4x32, stream_keys

M32 = 0xFFFFFFFF


def philox_reference(counter: list[int], key: list[int]) -> list[int]:
    """Philox4x32-10 on Python integers, written from the Random123 paper's round function."""
    c, k = list(counter), list(key)
    for r in range(10):
        if r:
            k = [(k[0] + 0x9E3779B9) & M32, (k[1] + 0xBB67AE85) & M32]
        p0, p1 = 0xD2511F53 * c[0], 0xCD9E8D57 * c[2]
        c = [(p1 >> 32) ^ c[1] ^ k[0], p1 & M32, (p0 >> 32) ^ c[3] ^ k[1], p0 & M32]
    return c


@pytest.mark.parametrize(
    "counter, key, expected",
    [
        ([0, 0, 0, 0], [0, 0], [0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8]),
        ([M32] * 4, [M32, M32], [0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD]),
        (
            [0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344],
            [0xA4093822, 0x299F31D0],
            [0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1],
        ),
    ],
)
def test_known_answers(counter, key, expected):
    """philox4x32 reproduces the Random123 known-answer vectors, and so does the Python reference."""
    assert philox4x32(torch.tensor(counter), torch.tensor(key)).tolist() == expected
    assert philox_reference(counter, key) == expected


def test_matches_the_reference_on_random_counters_and_keys():
    """Batched, broadcast tensor Philox equals the Python-integer reference word for word."""
    rng = np.random.default_rng(0)
    counters = rng.integers(0, 2**32, size=(50, 4), dtype=np.int64)
    keys = rng.integers(0, 2**32, size=(3, 1, 2), dtype=np.int64)
    got = philox4x32(torch.as_tensor(counters)[None], torch.as_tensor(keys))  # (3, 50, 4)
    assert got.shape == (3, 50, 4)
    for i in range(3):
        for j in range(50):
            assert got[i, j].tolist() == philox_reference(counters[j].tolist(), keys[i, 0].tolist())


def test_below_is_uniform_and_in_range():
    """below(words, n) lies in [0, n) and is uniform: every count within 5 sigma of its expectation."""
    idx = torch.arange(200_000)
    words = philox4x32(torch.stack([idx, torch.zeros_like(idx), idx % 3, idx % 5], -1), torch.tensor([7, 11]))
    for col, n in ((0, 7), (1, 20), (3, 256)):
        values = below(words[:, col], n)
        assert int(values.min()) == 0 and int(values.max()) == n - 1
        counts = torch.bincount(values, minlength=n).double()
        expected = len(idx) / n
        assert torch.all((counts - expected).abs() < 5 * (expected * (1 - 1 / n)) ** 0.5)


def test_stream_keys_are_32_bit_and_depend_on_both_seeds():
    """Each stream's key is two 32-bit words, fixed by (base seed, stream seed) and different when either changes."""
    keys = stream_keys(444, [0, 1, 0])
    assert keys.dtype == torch.int64 and keys.shape == (3, 2)
    assert int(keys.min()) >= 0 and int(keys.max()) <= M32
    assert keys[0].tolist() == keys[2].tolist() != keys[1].tolist()
    assert stream_keys(445, [0]).tolist() != keys[:1].tolist()
