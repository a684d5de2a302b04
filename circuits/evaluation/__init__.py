"""Evaluating circuits: faithfulness, curves with MIB's CPR / CMD, minimal circuits, ground-truth comparison,
and the published circuits of the literature.

    result = circuits.evaluate(model, task, circuit, ablation="corrupted")   # .faithfulness, .metric, .kl
    curve = circuits.faithfulness_curve(model, task, scored)                 # .cpr, .cmd, .to_frame()
    small = circuits.evaluation.minimal_circuit(model, task, scored, target=0.9)
    circuits.evaluation.auroc(scored, circuits.evaluation.published_circuit("ioi"))

Conventions (normalization, where f is computed, the empty circuit) are in
:mod:`circuits.evaluation.faithfulness`; circuits run through :class:`circuits.session.CircuitSession`.
"""

from circuits.evaluation.faithfulness import (
                                              MIB_FRACTIONS,
                                              EvaluationResult,
                                              FaithfulnessCurve,
                                              area_under_curve,
                                              cmd,
                                              cpr,
                                              evaluate,
                                              evaluate_many,
                                              faithfulness_curve,
                                              mib_scores,
)
from circuits.evaluation.ground_truth import (
                                              auroc,
                                              compare,
                                              node_auroc,
                                              node_precision_recall_at_size,
                                              node_scores_from_edges,
                                              precision_recall_at_size,
                                              roc_curve,
                                              select_at_size,
)
from circuits.evaluation.published import list_published, published_circuit, write_published
from circuits.graph.minimal import minimal_circuit
from circuits.session.normalization import FaithfulnessWarning

__all__ = [
    "evaluate", "evaluate_many", "faithfulness_curve", "mib_scores", "minimal_circuit", "EvaluationResult",
    "FaithfulnessCurve",
    "FaithfulnessWarning", "MIB_FRACTIONS", "area_under_curve", "cpr", "cmd",
    "auroc", "roc_curve", "compare", "precision_recall_at_size", "node_auroc", "node_precision_recall_at_size",
    "node_scores_from_edges", "select_at_size", "published_circuit", "list_published", "write_published",
]
