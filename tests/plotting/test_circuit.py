"""Circuit drawings (PNG, SVG) and DOT export, on a tiny structure and on MIB's GPT-2 IOI circuit."""

from __future__ import annotations

import re

import matplotlib.pyplot as plt
import pytest
import torch

from circuits.graph import Graph, GraphStructure
from circuits.plotting.circuit import draw_circuit, layout, to_dot, write_dot

from .conftest import check_png, check_svg, scored_graph


def test_small_circuit_png_and_svg(small_circuit, tmp_path):
    assert small_circuit.n_edges > 5
    scores = small_circuit.to_frame(circuit_only=True)["score"]
    assert (scores > 0).any() and (scores < 0).any()  # both colours drawn
    fig = draw_circuit(small_circuit, tmp_path / "c.png")
    h, w = check_png(tmp_path / "c.png")
    assert w >= 900 and h >= 700  # ~7 x 5.5 in at 150 dpi at least
    draw_circuit(small_circuit, tmp_path / "c.svg")
    root = check_svg(tmp_path / "c.svg", min_bytes=5_000)
    text = "".join(root.itertext())
    assert "logits" in text or (tmp_path / "c.svg").read_text().count("<path") > 10
    assert fig.axes and not plt.get_fignums()  # a detached figure: nothing left open in pyplot


def test_mib_gpt2_circuit(mib_graph, tmp_path):
    """MIB's 756-edge IOI circuit of GPT-2 small: big, readable image; every node labelled."""
    assert mib_graph.n_edges == 756
    fig = draw_circuit(mib_graph, tmp_path / "ioi.png")
    h, w = check_png(tmp_path / "ioi.png", min_bytes=200_000)
    assert w >= 1500 and h >= 1500  # ~13 x 14 in at 150 dpi: 8.5 pt labels stay readable
    labels = {t.get_text() for t in fig.axes[0].texts}
    assert set(mib_graph.nodes) <= labels  # every node of the circuit carries its name
    draw_circuit(mib_graph, tmp_path / "ioi.svg")
    check_svg(tmp_path / "ioi.svg", min_bytes=100_000)


def test_title_legend_and_cap(mib_graph):
    fig = draw_circuit(mib_graph, max_edges=100)
    ax = fig.axes[0]
    assert "showing the 100 with largest |score| of 756" in ax.get_title(loc="left")
    from matplotlib.collections import LineCollection
    lines = [c for c in ax.collections if isinstance(c, LineCollection)]
    assert [len(c.get_segments()) for c in lines] == [100]
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    for want in ("q input of a head", "k input of a head", "v input of a head", "score > 0 (helps)",
                 "score < 0 (hurts)", "MLP m{layer}"):
        assert want in legend


def test_layout_geometry():
    st = GraphStructure(3, 4)
    pos = layout(st)
    assert pos["input"][1] < pos["a0.h0"][1] < pos["a1.h0"][1] < pos["a2.h3"][1] < pos["logits"][1]
    assert [pos[f"a1.h{h}"][0] for h in range(4)] == [0, 1, 2, 3]
    assert pos["m1"][0] > pos["a1.h3"][0]  # MLP right of the heads
    q, k, v = (pos[f"a1.h2<{x}>"] for x in "qkv")
    assert q[0] < k[0] < v[0] and q[1] == k[1] == v[1] < pos["a1.h2"][1]  # three ports under the head
    assert pos["m1"][1] > pos["a1.h0"][1]  # sequential: the MLP reads its own layer's heads
    assert layout(GraphStructure(3, 4, parallel_attn_mlp=True))["m1"][1] == pos["a1.h0"][1]


def test_attention_only_and_unscored(tmp_path):
    g = scored_graph(2, 3, has_mlp=False).top_k(20, absolute=True)
    fig = draw_circuit(g, tmp_path / "attn.png")
    check_png(tmp_path / "attn.png")
    assert "MLP" not in [t.get_text() for t in fig.axes[0].get_xticklabels()]
    st = GraphStructure(2, 2)
    plain = Graph.from_edges(st, ["input->a0.h0<v>", "a0.h0->a1.h1<q>", "input->a1.h1<k>", "a1.h1->logits"])
    fig = draw_circuit(plain, tmp_path / "plain.png")  # all scores 0: grey edges, no width legend
    check_png(tmp_path / "plain.png", min_bytes=5_000)
    assert "edge (no scores)" in [t.get_text() for t in fig.axes[0].get_legend().get_texts()]


def test_bad_suffix(small_circuit, tmp_path):
    with pytest.raises(ValueError, match="png"):
        draw_circuit(small_circuit, tmp_path / "c.bmp")


DOT_EDGE = re.compile(r'^\s*"([^"]+)" -> "([^"]+)" \[color="#[0-9a-f]{8}", penwidth=[0-9.]+, tooltip="([^"]+)"\];$',
                      re.M)


def test_dot_has_every_circuit_edge(mib_graph, small_circuit, tmp_path):
    for g in (small_circuit, mib_graph):
        text = to_dot(g)
        assert text.startswith("digraph circuit {") and text.rstrip().endswith("}")
        assert text.count("{") == text.count("}")
        found = {f"{s}->{r}" for s, r, _ in DOT_EDGE.findall(text)}
        assert found == set(g.edges)
        for s, r, tip in DOT_EDGE.findall(text):
            assert tip.split(" ")[0] == f"{s}->{r}"
        # each q/k/v port hangs off its head by one structural edge
        ports = {r for s, r, _ in DOT_EDGE.findall(text) if "<" in r}
        for p in ports:
            assert f'"{p}" -> "{p.split("<")[0]}" [style=dashed' in text
    assert len(DOT_EDGE.findall(to_dot(mib_graph))) == 756
    path = write_dot(small_circuit, tmp_path / "c.dot")
    assert path.read_text() == to_dot(small_circuit)


def test_dot_signs():
    st = GraphStructure(1, 2)
    g = Graph.from_edges(st, ["input->a0.h0<q>", "a0.h0->logits", "input->logits"],
                         scores=torch.zeros(st.n_senders, st.n_receivers))
    g.set_scores({"input->a0.h0<q>": 2.0, "a0.h0->logits": -1.0, "input->logits": 0.5})
    text = to_dot(g)
    assert re.search(r'"input" -> "a0.h0<q>" \[color="#2166ac', text)  # positive: blue
    assert re.search(r'"a0.h0" -> "logits" \[color="#b2182b', text)  # negative: red
