"""Figures and reports: circuit drawings (matplotlib, graphviz DOT), faithfulness curves, score distributions,
method agreement, and the benchmark report generated from a results table.

>>> from circuits.plotting import draw_circuit, to_dot, plot_faithfulness_curves   # doctest: +SKIP
>>> draw_circuit(graph.top_k(200), "ioi.png")                                      # doctest: +SKIP

Everything renders with matplotlib's Agg backend (no display needed); files are written by suffix
(``.png``, ``.svg``, ``.pdf``), and figures written for ``results/`` carry their provenance (commit, machine,
date, settings) in a footer and in the file's metadata.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

_EXPORTS = {
    "draw_circuit": "circuits.plotting.circuit", "to_dot": "circuits.plotting.circuit",
    "write_dot": "circuits.plotting.circuit", "layout": "circuits.plotting.circuit",
    "plot_faithfulness_curves": "circuits.plotting.curves", "curve_points": "circuits.plotting.curves",
    "plot_score_distribution": "circuits.plotting.scores", "plot_method_agreement": "circuits.plotting.scores",
    "method_agreement": "circuits.plotting.scores", "plot_position_scores": "circuits.plotting.positions",
    "write_report": "circuits.plotting.report", "load_results": "circuits.plotting.report",
    "provenance": "circuits.plotting.provenance",
    "view": "circuits.plotting.viewer", "to_html": "circuits.plotting.viewer",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:  # lazy: importing circuits.plotting does not import matplotlib
    if name in _EXPORTS:
        return getattr(import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'circuits.plotting' has no attribute {name!r}")
