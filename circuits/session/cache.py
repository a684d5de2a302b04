"""What a session keeps of each batch between passes (its ablation, its neurons' ablation), inside a memory room.

A session's passes are sized to its memory budget (:meth:`~circuits.session.CircuitSession.fit`); what it keeps
across passes must fit beside them, or a run over many examples grows past the budget one batch at a time. So a
batch's value is kept while the kept values fit the room the budget leaves beside the largest pass, and made
again (the same values: a deterministic run of the same inputs) when it does not fit.
"""

from __future__ import annotations

import dataclasses
from typing import Callable, TypeVar

from torch import Tensor

T = TypeVar("T")


def device_bytes(value: object) -> int:
    """Bytes of the tensors in ``value``: a tensor, or a dataclass of them (``Ablated``, ``HeldCircuit``)."""
    if isinstance(value, Tensor):
        return value.numel() * value.element_size()
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return sum(device_bytes(getattr(value, f.name)) for f in dataclasses.fields(value))
    return 0


class BatchCache:
    """Values per ``(kind, batch number)``, kept while their bytes fit ``room()`` (module docstring)."""

    def __init__(self, room: Callable[[], int]):
        self._room = room
        self._values: dict[tuple[str, int], object] = {}
        self._bytes: dict[tuple[str, int], int] = {}

    @property
    def nbytes(self) -> int:
        """Bytes kept now."""
        return sum(self._bytes.values())

    def __contains__(self, key: tuple[str, int]) -> bool:
        return key in self._values

    def get(self, kind: str, number: int, make: Callable[[], T]) -> T:
        """The kept value of batch ``number``, or ``make()``'s, kept when it fits."""
        key = (kind, number)
        if key in self._values:
            return self._values[key]  # type: ignore[return-value]
        value = make()
        self.offer(kind, number, value)
        return value

    def offer(self, kind: str, number: int, value: object) -> None:
        """Keep ``value`` for batch ``number`` if it fits beside what is kept."""
        size = device_bytes(value)
        if (kind, number) not in self._values and self.nbytes + size <= self._room():
            self._values[(kind, number)] = value
            self._bytes[(kind, number)] = size

    def shrink(self) -> None:
        """Drop the latest kept values until the rest fit the room (after the room shrank: a larger pass fitted)."""
        while self._values and self.nbytes > self._room():
            key = next(reversed(self._values))
            del self._values[key], self._bytes[key]

    def clear(self) -> None:
        self._values.clear()
        self._bytes.clear()
