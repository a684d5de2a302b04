"""Grouped k/v receivers (``grouped_kv``, issue 18 point 4): counts, the grouped forward, scores that are the sums
of the per-head ones, and MIB files that expand to per-head names."""

from __future__ import annotations

import pytest
import torch

import circuits
from circuits.discovery import discover
from circuits.graph import Graph
from circuits.graph.grouped import expand_grouped, group_scores, per_head_columns
from circuits.graph.structure import GraphMismatchError, GraphStructure
from circuits.interventions.masked import HeldCircuit, IncrementalResidual, MaskedResidual
from circuits.models.random import PRESETS
from circuits.tasks import task_vocabulary, word_level_tokenizer
from tests.discovery.conftest import perturbed_random_model

FAMILIES = ("llama", "qwen2")


@pytest.fixture(scope="module")
def tokenizer():
    return word_level_tokenizer(task_vocabulary())


def models(tokenizer, family, dtype=torch.float32, n_layers=2):
    """The same weights twice: per-head (MIB) k/v receivers and grouped ones (4 heads, 2 groups)."""
    per_head = perturbed_random_model(tokenizer, family, n_layers, dtype=dtype, n_kv_heads=2)
    return per_head, per_head.with_grouped_kv(True)


def expanded_masks(grouped: GraphStructure, masks: torch.Tensor) -> torch.Tensor:
    """Grouped masks ``[..., S, R_g]`` as per-head masks: each group's k/v mask copied to each of its heads."""
    column, _ = per_head_columns(grouped)
    return masks[..., column]


# ---- counts ---------------------------------------------------------------------------------------------------
def test_llama_8b_counts():
    p = PRESETS["llama-3.1-8b"]
    shape = dict(n_layers=p["n_layers"], n_heads=p["n_heads"], n_kv_heads=p["n_kv_heads"])
    assert GraphStructure(**shape).n_edges == 1_592_881  # MIB's
    grouped = GraphStructure(**shape, grouped_kv=True)
    assert grouped.n_edges == 805_681
    assert grouped.n_receivers == 32 * (32 + 8 + 8 + 1) + 1
    assert grouped.receivers[32].name == "a0.g0<k>" and grouped.receivers[40].name == "a0.g0<v>"


@pytest.mark.parametrize("family", FAMILIES)
def test_small_model_counts_and_names(tokenizer, family):
    per_head, grouped = models(tokenizer, family)
    s, g = per_head.structure, grouped.structure
    # per layer l: every receiver reads 1 + l * 5 senders; MIB: 12 q/k/v receivers, grouped: 4 q + 2 k + 2 v
    assert s.n_edges == 12 * 1 + 5 + 12 * 6 + 10 + 11 == 110
    assert g.n_edges == 8 * 1 + 5 + 8 * 6 + 10 + 11 == 82
    assert g.grouped_kv and grouped.grouped_kv and not per_head.grouped_kv
    names = set(g.edge_names())
    assert len(names) == g.n_edges and "a0.h1->a1.g1<k>" in names and "input->a1.h3<q>" in names
    assert not any(".h" in n.split("->")[1] and n.endswith(("<k>", "<v>")) for n in names)
    assert g.receiver_nodes[g.receiver_index("a1.g1<v>")].nonzero().flatten().tolist() == [
        g.head_sender(1, 2), g.head_sender(1, 3)]


def test_without_grouped_query_attention_the_option_is_the_mib_graph(tokenizer):
    model = perturbed_random_model(tokenizer, "gpt2", 2)
    assert model.with_grouped_kv(True).structure == model.structure  # one group per head: the same graph
    assert GraphStructure(n_layers=2, n_heads=4, grouped_kv=True).grouped_kv is False


# ---- the grouped forward -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("family", FAMILIES)
def test_grouped_full_forward_equals_hf(tokenizer, family):
    _, grouped = models(tokenizer, family)
    ids = torch.randint(0, len(tokenizer), (3, 9))
    hf = grouped.hf(ids).logits
    s = grouped.structure
    assert torch.allclose(grouped.logits(ids), hf, atol=1e-5)
    ablated = torch.randn(s.n_senders, 3, 9, 32)
    full = s.edge_mask.float()
    assert torch.allclose(grouped.patched_logits(ids, full, ablated), hf, atol=1e-4)


@pytest.mark.parametrize("family", FAMILIES)
def test_grouped_circuit_equals_per_head_circuit_with_copied_masks(tokenizer, family):
    per_head, grouped = models(tokenizer, family)
    s = grouped.structure
    ids = torch.randint(0, len(tokenizer), (2, 8))
    gen = torch.Generator().manual_seed(3)
    ablated = grouped.sender_outputs(torch.randint(0, len(tokenizer), (2, 8)))  # a corrupted run
    masks = (torch.rand(3, s.n_senders, s.n_receivers, generator=gen) > 0.5).float() * s.edge_mask
    masks[2, :, s.qkv_receiver(1, 3, "k")] = 0  # a group whose heads are fed by q only in one circuit
    reference = per_head.patched_logits(ids, expanded_masks(s, masks), ablated)
    empty = per_head.patched_logits(ids, torch.zeros_like(expanded_masks(s, masks)), ablated)
    assert (reference - empty).abs().max() > 0.1  # the circuits matter
    assert torch.allclose(grouped.patched_logits(ids, masks, ablated), reference, atol=1e-5)
    # differentiable masks (no node is skipped) and the incremental engine give the same logits
    differentiable = grouped.run(ids, residual=MaskedResidual(masks.clone().requires_grad_(True), ablated)).logits
    assert torch.allclose(differentiable, reference, atol=1e-5)
    held = HeldCircuit.of_model(s, grouped.sender_outputs(ids))
    incremental = grouped.run(ids, residual=IncrementalResidual(masks, ablated, held)).logits
    assert torch.allclose(incremental, reference, atol=1e-5)


def test_grouped_kv_projections_are_made_once_per_group(tokenizer):
    """The grouped forward reads one k and one v input per group: 2 + 2 rows beside 4 q, not 4 + 4."""
    _, grouped = models(tokenizer, "llama")
    s = grouped.structure
    seen = []

    class Spy(MaskedResidual):
        def read(self, receivers, then=None):
            out = super().read(receivers, then)
            if then is not None or (isinstance(receivers, slice) and receivers.stop - receivers.start > 1):
                seen.append(out.shape[0])
            return out

    ids = torch.randint(0, len(tokenizer), (2, 6))
    masks = (torch.rand(s.n_senders, s.n_receivers, generator=torch.Generator().manual_seed(0)) > 0.5).float()
    grouped.run(ids, residual=Spy(masks * s.edge_mask, torch.zeros(s.n_senders, 1, 1, 32)))
    # a full layer reads 4 + 2 + 2 inputs (MIB's per-head receivers: 12); three heads of both groups 3 + 2 + 2
    assert 4 + 2 + 2 in seen and not {9, 12} & set(seen) and max(seen) == 8


# ---- scores: grouped = sums of per-head ------------------------------------------------------------------------
@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("method,params", [("eap", {}), ("eap-ig", {"steps": 3}), ("eap-ig-activations", {"steps": 2})])
def test_grouped_scores_are_sums_of_per_head_scores(tokenizer, family, method, params):
    per_head, grouped = models(tokenizer, family)
    task = circuits.load_task("ioi", per_head, n=8, seed=0)
    mib = discover(per_head, task, method, split="all", batch_size=4, **params)
    ours = discover(grouped, task, method, split="all", batch_size=4, **params)
    s = ours.structure
    assert s.grouped_kv and ours.metadata["model"] == per_head.name
    summed = group_scores(mib.scores.double(), s)
    k = s.qkv_receiver(1, 2, "k")
    assert summed[:, k].abs().max() > 1e-4  # the group's k edges carry signal
    assert torch.allclose(ours.scores.double(), summed, atol=1e-5, rtol=0)
    # the option from discover itself, on the per-head model
    direct = discover(per_head, task, method, split="all", batch_size=4, grouped_kv=True, **params)
    assert torch.equal(direct.scores, ours.scores)


def test_exact_and_node_patching_on_grouped_graphs(tokenizer):
    per_head, grouped = models(tokenizer, "llama", dtype=torch.float64)
    task = circuits.load_task("ioi", per_head, n=6, seed=1)
    exact = discover(grouped, task, "exact", split="all", circuits_per_pass=7)
    plain = discover(grouped, task, "exact", split="all", circuits_per_pass=7, incremental=False)
    assert torch.allclose(exact.scores, plain.scores, atol=1e-6)
    s = grouped.structure
    batch = task.as_batch()
    ablated = per_head.sender_outputs(batch.corrupted, batch.attention_mask)
    full = task.base_metric(per_head.logits(batch.clean, batch.attention_mask), batch).mean()
    for name in ("a0.h1->a1.g1<k>", "input->a1.g0<v>", "a0.h3->a1.h2<q>", "m1->logits"):
        i, j = s.edge_index(name)
        mask = s.edge_mask.double()
        mask[i, j] = 0  # the grouped cut is the per-head cut of that edge into every head of the group
        cut = task.base_metric(per_head.patched_logits(batch.clean, expanded_masks(s, mask), ablated,
                                                       attention_mask=batch.attention_mask), batch).mean()
        assert float(exact.scores[i, j]) == pytest.approx(float(full - cut), rel=1e-5, abs=1e-7), name  # fp32 metric
    nodes = discover(grouped, task, "node-patching", split="all")
    mib_nodes = discover(per_head, task, "node-patching", split="all")
    assert torch.allclose(nodes.node_scores, mib_nodes.node_scores, atol=1e-6, equal_nan=True)


def test_acdc_and_evaluation_on_grouped_graphs(tokenizer):
    per_head, grouped = models(tokenizer, "qwen2", dtype=torch.float64)
    task = circuits.load_task("ioi", per_head, n=6, seed=2)
    acdc = discover(grouped, task, "acdc", split="all", threshold=0.02)
    assert acdc.structure.grouped_kv and 0 < acdc.n_edges < grouped.structure.n_edges
    scored = discover(grouped, task, "eap", split="all")
    circuit = scored.top_k(30)
    ours = circuits.evaluate(grouped, task, circuit, split="all", prune=False)
    mib_circuit = Graph(per_head.structure, in_graph=expanded_masks(grouped.structure, circuit.in_graph))
    theirs = circuits.evaluate(per_head, task, mib_circuit, split="all", prune=False)
    assert ours.n_edges == circuit.n_edges > 0 and abs(ours.metric - ours.metric_empty) > 1e-3
    assert ours.metric == pytest.approx(theirs.metric, abs=1e-6)
    assert circuits.evaluate(grouped, task, circuit, split="all").n_edges <= 30  # pruned on grouped receivers
    curve = circuits.faithfulness_curve(grouped, task, scored, split="all")
    assert len(curve.to_frame()) > 0


# ---- files and mismatches ------------------------------------------------------------------------------------
def test_grouped_graph_round_trips_and_expands_to_mib(tokenizer, tmp_path):
    per_head, grouped = models(tokenizer, "qwen2")
    task = circuits.load_task("ioi", per_head, n=8, seed=3)
    scored = discover(grouped, task, "eap", split="all")
    circuit = scored.top_k(20)
    for suffix in (".json", ".pt", ".graphml"):
        back = Graph.load(circuit.save(tmp_path / f"g{suffix}"), model=grouped)
        assert back.structure.grouped_kv and torch.equal(back.in_graph, circuit.in_graph)
        assert torch.allclose(back.scores.float(), circuit.scores.float())
    mib = expand_grouped(circuit)
    s, g = mib.structure, grouped.structure
    assert s == per_head.structure and not s.grouped_kv
    assert torch.allclose(group_scores(mib.scores.double(), g), circuit.scores.double(), atol=1e-7)
    i, j = g.edge_index("a0.h1->a1.g1<k>")
    for h in (2, 3):  # the group's heads get half the score each, the flag copied
        r = s.receiver_index(f"a1.h{h}<k>")
        assert float(mib.scores[i, r]) == pytest.approx(float(circuit.scores[i, j]) / 2)
        assert bool(mib.in_graph[i, r]) == bool(circuit.in_graph[i, j])
    assert mib.n_edges >= circuit.n_edges
    loaded = Graph.load(mib.save(tmp_path / "mib.json"), model=per_head)  # a per-head graph, MIB's names
    assert torch.equal(loaded.in_graph, mib.in_graph)
    with pytest.raises(GraphMismatchError, match="grouped_kv"):
        Graph.load(tmp_path / "g.json", model=per_head)
    with pytest.raises(GraphMismatchError, match="grouped_kv=False"):
        Graph.load(tmp_path / "mib.json", model=grouped)
    with pytest.raises(GraphMismatchError, match="grouped-kv"):
        circuits.evaluate(per_head, task, circuit, split="all")


def test_mib_submission_of_a_grouped_graph_passes_check_mib(tokenizer, tmp_path):
    from circuits.graph.submission import check_submission, export_submission

    # MIB's qwen2.5 shape (24 layers, 14 heads, 2 kv groups): a grouped graph of it, scored at random
    g = GraphStructure(n_layers=24, n_heads=14, n_kv_heads=2, grouped_kv=True)
    scores = torch.randn(g.n_senders, g.n_receivers, generator=torch.Generator().manual_seed(0))
    graph = Graph.full(g, scores=scores)
    folder = export_submission(graph, tmp_path, task="ioi", model="qwen2.5", file_type="pt")
    assert check_submission(tmp_path, min_models=1, min_tasks=1) == []
    loaded = Graph.load(folder / "importances.pt")
    assert not loaded.structure.grouped_kv and loaded.structure.n_edges == 179_749  # MIB's count
    assert torch.allclose(group_scores(loaded.scores.double(), g), graph.scores.double(), atol=1e-5)
    export_submission(graph, tmp_path, task="ioi", model="qwen2.5", kind="circuits")
    assert check_submission(tmp_path, min_models=1, min_tasks=1) == []


def test_views_of_a_grouped_circuit(tokenizer, tmp_path):
    from circuits.plotting.circuit import draw_circuit
    from circuits.plotting.viewer import view

    per_head, grouped = models(tokenizer, "llama")
    s = grouped.structure
    scores = torch.zeros(s.n_senders, s.n_receivers)
    i, j = s.edge_index("a0.h1->a1.g1<k>")
    scores[i, j] = 1.0
    circuit = Graph.full(s, scores=scores)
    nxg = circuit.to_networkx(circuit_only=False)
    assert nxg.nodes["a1.g1<k>"]["group"] == 1 and set(nxg.successors("a1.g1<k>")) == {"a1.h2", "a1.h3"}
    assert nxg.edges["a0.h1", "a1.g1<k>"]["score"] == 1.0
    draw_circuit(circuit, tmp_path / "c.png", circuit_only=False)  # drawn at the heads' k ports (score shares)
    assert view(circuit, tmp_path / "c.html").stat().st_size > 0
