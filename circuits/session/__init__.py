"""Running circuits on a task: one :class:`CircuitSession` per model x task split x ablation x metric, shared by
every discovery method and every evaluation (:mod:`circuits.session.session`)."""

from circuits.session.batches import SessionBatch
from circuits.session.normalization import FaithfulnessWarning, normalized, undefined, warn_undefined
from circuits.session.session import (
                                      Baselines,
                                      CircuitMetrics,
                                      CircuitSession,
                                      MemoryBudgetError,
                                      PositionAlignmentError,
                                      SessionError,
                                      check_task_fits_model,
                                      resolve_split,
)

__all__ = ["CircuitSession", "SessionBatch", "SessionError", "MemoryBudgetError", "PositionAlignmentError",
           "Baselines", "CircuitMetrics", "resolve_split", "check_task_fits_model", "undefined", "normalized",
           "FaithfulnessWarning", "warn_undefined"]
