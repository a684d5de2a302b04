"""The session's batches as a spread run's work list: methods whose scores are sums over examples (the attribution
methods, ``eap-neurons``, ``eap-ig-neurons``) declare it as their ``Method.units``, and each worker scores the
batches of its share (:meth:`~circuits.session.CircuitSession.in_share`)."""

from __future__ import annotations

from typing import Iterable

from circuits.discovery.progress import progress
from circuits.session import CircuitSession, SessionBatch


def batch_units(session: CircuitSession, **params) -> int:
    """What a spread run splits (``Method.units``): the session's batches, as scores are sums over examples."""
    return len(session.batches)


def batches_in_share(session: CircuitSession, description: str) -> Iterable[SessionBatch]:
    """The batches this process scores (all of them, or its share of a spread run), behind a progress bar."""
    batches = session.in_share(session.batches)
    return progress(batches, description, session, total=len(batches))
