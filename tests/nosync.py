"""A CPU stand-in for torch.cuda.set_sync_debug_mode("error"): fail on anything that would make a step wait for the host.

On CUDA, reading a device value on the host (.item(), .tolist(), bool(t), .cpu(), numpy) and ops
whose output shape depends on the data (nonzero, boolean-mask indexing, unique, masked_select,
repeat_interleave) block until the GPU has caught up. On CPU nothing blocks, so inside
`forbid_host_sync()` those calls raise instead: the aten ops through a TorchDispatchMode (it also
sees the reads that C++ kernels make, e.g. F.one_hot's min/max check), the Tensor methods that
bypass the dispatcher by patching them.
"""

from __future__ import annotations

import contextlib
from typing import Iterator
from unittest import mock

import torch
from torch.utils._python_dispatch import TorchDispatchMode

aten = torch.ops.aten


class HostSyncError(RuntimeError):
    """Something inside forbid_host_sync() would have synchronised with the host."""


# aten ops that read a device value on the host or size their output from the data.
SYNCING_OPS = {
    aten._local_scalar_dense,  # .item(), int(t), float(t), bool(t), t as an index
    aten.is_nonzero,
    aten.equal,
    aten.nonzero,
    aten.masked_select,
    aten._unique2,
    aten.unique_consecutive,
    aten.unique_dim,
    aten.repeat_interleave,
}
# Tensor methods that copy to the host without going through an aten op on a CPU tensor.
SYNCING_METHODS = ("tolist", "numpy", "cpu", "__array__")


# Indexing ops whose output (or work) is sized by the True entries of a boolean index.
MASK_INDEXING_OPS = {aten.index, aten.index_put, aten.index_put_, aten._index_put_impl_}


def _bool_index(args) -> bool:
    indices = args[1] if len(args) > 1 else ()
    return any(isinstance(i, torch.Tensor) and i.dtype == torch.bool for i in indices)


class _ForbidSyncingOps(TorchDispatchMode):
    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        packet = func.overloadpacket
        if packet in SYNCING_OPS or (packet in MASK_INDEXING_OPS and _bool_index(args)):
            raise HostSyncError(f"host synchronisation: {func}")
        return func(*args, **(kwargs or {}))


def _refuse(name: str):
    def method(*args, **kwargs):
        raise HostSyncError(f"host synchronisation: Tensor.{name}")

    return method


@contextlib.contextmanager
def forbid_host_sync() -> Iterator[None]:
    """Raise HostSyncError on any host read or data-dependent shape while the block runs."""
    with contextlib.ExitStack() as stack:
        for name in SYNCING_METHODS:
            stack.enter_context(mock.patch.object(torch.Tensor, name, _refuse(name)))
        stack.enter_context(_ForbidSyncingOps())
        yield
