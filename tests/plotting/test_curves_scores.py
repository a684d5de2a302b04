"""Faithfulness curves, score distributions and method agreement."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch

from circuits.graph import Graph, GraphStructure
from circuits.plotting.curves import MIB_FRACTIONS, curve_points, plot_faithfulness_curves
from circuits.plotting.scores import method_agreement, plot_method_agreement, plot_score_distribution

from .conftest import check_png, check_svg, scored_graph

FR = np.array(MIB_FRACTIONS)


def frame(rate: float, noise: float = 0.0, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    return pd.DataFrame({"fraction": FR, "faithfulness": 1 - np.exp(-rate * FR * 100) + rng.normal(0, noise, 10)})


class FakeCurve:
    """What circuits.evaluation's FaithfulnessCurve offers the plot: to_frame(), cpr, cmd."""

    def __init__(self, f: pd.DataFrame, cpr: float, cmd: float):
        self._f, self.cpr, self.cmd = f, cpr, cmd

    def to_frame(self) -> pd.DataFrame:
        return self._f


def test_curve_points_area_by_hand():
    f = [0.0, 0.5, 1.0]
    p = curve_points({"fractions": [0.0, 0.5, 1.0], "faithfulness": f})
    assert p.cpr == pytest.approx(0.5 * (0 + 0.5) / 2 + 0.5 * (0.5 + 1) / 2)  # 0.5
    assert p.cmd == pytest.approx(0.5 * (1 + 0.5) / 2 + 0.5 * (0.5 + 0) / 2)  # 0.5
    # Every accepted form gives the same points.
    values = list(frame(1.0)["faithfulness"])
    forms = [frame(1.0), values, json.dumps({"fractions": list(FR), "faithfulness": values}),
             [{"fraction": x, "faithfulness": y} for x, y in zip(FR, values)], np.asarray(values),
             {"cpr": 0.25, "cmd": 0.5, "signed": {"fractions": list(FR), "faithfulness": values}}]
    for form in forms:
        q = curve_points(form)
        np.testing.assert_allclose(q.fractions, FR)
        np.testing.assert_allclose(q.faithfulness, values)
    assert curve_points(forms[-1]).cpr == 0.25  # the stored CPR wins
    assert curve_points(FakeCurve(frame(1.0), 0.7, 0.2)).cmd == 0.2
    with pytest.raises(ValueError, match="ambiguous"):
        curve_points([0.1, 0.2, 0.3])


def test_faithfulness_curves_png_svg(tmp_path):
    curves = {"eap": FakeCurve(frame(1.0), 0.912, 0.081), "eap-ig": [frame(2, 0.02, s) for s in range(3)],
              "random": frame(0.01)}
    fig = plot_faithfulness_curves(curves, tmp_path / "curves.png",
                                   provenance={"commit": "abc1234", "machine": {"cpu": "CPU", "cores": 2},
                                               "date": "today", "settings": {"task": "ioi"}})
    check_png(tmp_path / "curves.png", min_px=(500, 800))
    ax = fig.axes[0]
    assert ax.get_xscale() == "log"
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    assert legend[0] == "eap: CPR 0.912, CMD 0.081"
    assert legend[1].startswith("eap-ig, 3 runs: CPR ") and " ± " in legend[1]
    assert any("abc1234" in t.get_text() for t in fig.texts)  # provenance footer
    plot_faithfulness_curves(curves, tmp_path / "curves.svg")
    check_svg(tmp_path / "curves.svg")
    with pytest.raises(ValueError):
        plot_faithfulness_curves({}, None)


def test_score_distribution(mib_graph, tmp_path):
    other = scored_graph(12, 12, seed=1)
    fig = plot_score_distribution({"eap-ig (MIB)": mib_graph, "random": other}, tmp_path / "scores.png")
    check_png(tmp_path / "scores.png", min_px=(400, 900))
    assert fig.axes[0].get_yscale() == "log"
    assert fig.axes[0].get_xscale() == "symlog"  # EAP-IG scores span decades
    assert fig.axes[1].get_xscale() == "linear"  # Gaussian ones do not
    assert any("circuit: 756 edges" in t.get_text() for t in fig.axes[0].texts)
    plot_score_distribution(scored_graph(), tmp_path / "one.svg")  # a single graph works too
    check_svg(tmp_path / "one.svg")


def test_method_agreement_by_hand(tmp_path):
    st = GraphStructure(2, 2)
    n = st.n_edges
    base = torch.arange(n, dtype=torch.float32)
    a = Graph.full(st)
    a.set_scores(base)  # best edges: the last ones in MIB order
    b = Graph.full(st)
    b.set_scores(base.clone())
    c = Graph.full(st)
    c.set_scores(-base)  # best edges: the first ones
    d = Graph.full(st)
    shifted = base.clone()
    shifted[-2:] = -1.0  # top-4 of d = a's top-4 minus 2 edges plus 2 others
    d.set_scores(shifted)
    m = method_agreement({"a": a, "b": b, "c": c, "d": d}, 4)
    assert m.loc["a", "b"] == 1.0 and m.loc["a", "c"] == 0.0
    assert m.loc["a", "d"] == pytest.approx(2 / 6)  # |A&D| = 2, |A|D| = 6
    assert method_agreement({"a": a, "d": d}, 4, metric="overlap").loc["a", "d"] == pytest.approx(0.5)
    np.testing.assert_allclose(np.diag(m.to_numpy()), 1.0)
    fig = plot_method_agreement({"a": a, "b": b, "c": c, "d": d}, 4, tmp_path / "agree.png")
    check_png(tmp_path / "agree.png", min_px=(300, 300))
    assert "0.33" in [t.get_text() for t in fig.axes[0].texts]
    plot_method_agreement({"a": a, "c": c}, 4, tmp_path / "agree.svg", metric="overlap")
    check_svg(tmp_path / "agree.svg")
    with pytest.raises(ValueError, match="shape"):
        method_agreement({"a": a, "big": scored_graph(3, 2)}, 4)
