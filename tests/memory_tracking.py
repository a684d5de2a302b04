"""A test utility: the peak bytes of tensor storage a block of code allocates, tracked by a dispatch mode.

Every storage an operator creates inside the block counts from its creation until it is freed; views and
in-place results of storages that already existed (weights, cached ablations, the block's own buffers) do not
count again. Allocations a kernel makes internally (scratch space below the dispatcher) are not seen: this is
the peak of the tensors the code holds, what :mod:`circuits.session.memory` estimates.
"""

from __future__ import annotations

import weakref

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten


class StoragePeak(TorchDispatchMode):
    """``with StoragePeak() as tracked: ...`` then ``tracked.peak`` (bytes) and ``tracked.live`` (bytes now)."""

    def __init__(self) -> None:
        super().__init__()
        self.live = 0
        self.peak = 0
        self._held: dict[int, int] = {}  # storage address -> bytes, while alive

    def _count(self, storage: torch.UntypedStorage) -> None:
        key, size = storage.data_ptr(), storage.nbytes()
        if size == 0 or key in self._held:
            return
        self._held[key] = size
        self.live += size
        self.peak = max(self.peak, self.live)
        weakref.finalize(storage, self._free, key)

    def _free(self, key: int) -> None:
        self.live -= self._held.pop(key, 0)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        inputs = {t.untyped_storage().data_ptr() for t in tree_flatten((args, kwargs))[0]
                  if isinstance(t, torch.Tensor)}
        for t in tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor) and t.untyped_storage().data_ptr() not in inputs:  # new, not a view
                self._count(t.untyped_storage())
        return out
