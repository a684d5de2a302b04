"""Edge pruning: target sparsity, seeded reproducibility, degenerate-outcome warnings, checkpoint resume."""

from __future__ import annotations

import warnings

import pytest
import torch

import circuits
from circuits.discovery import edge_pruning as ep
from circuits.discovery import hard_concrete as hc
from circuits.discovery.checkpoint import Checkpoint
from circuits.graph.graph import Graph
from tests.discovery.conftest import make_ctx


_ctx = make_ctx


def test_hard_concrete_gates():
    la = torch.tensor([-10.0, 0.0, 10.0])
    z = torch.stack([hc.sample(la, torch.Generator().manual_seed(i)) for i in range(2000)])
    assert float(z.min()) >= 0 and float(z.max()) <= 1
    assert float((z[:, 0] == 0).float().mean()) > 0.95 and float((z[:, 2] == 1).float().mean()) > 0.95
    torch.testing.assert_close((z > 0).float().mean(0), hc.prob_nonzero(la), atol=0.03, rtol=0)


def test_reaches_target_sparsity(setup):
    ctx = _ctx(setup)
    s = ctx.model.structure
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # converged: no warning
        scores, in_graph = ep.edge_pruning(ctx, target_sparsity=0.9, steps=150, lr=0.1)
    info = ctx.extras["edge-pruning"]
    assert abs(info["expected_sparsity"] - 0.9) < 0.05 and abs(info["sparsity_of_open_gates"] - 0.9) < 0.05
    assert info["n_selected"] == round(0.1 * s.n_edges)
    assert 0 < int(in_graph.sum()) <= info["n_selected"]
    g = Graph(s, scores=scores, in_graph=in_graph)
    assert torch.equal(g.top_k(info["n_selected"]).in_graph, in_graph)  # scores reproduce the circuit


@pytest.mark.filterwarnings("ignore:edge pruning")
def test_seeded_reproducibility(setup):
    ctx = _ctx(setup)
    a = ep.edge_pruning(ctx, target_sparsity=0.8, steps=20, seed=3)
    b = ep.edge_pruning(ctx, target_sparsity=0.8, steps=20, seed=3)
    c = ep.edge_pruning(ctx, target_sparsity=0.8, steps=20, seed=4)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[0], c[0])


def test_warns_on_degenerate_outcomes(setup):
    ctx = _ctx(setup)
    with pytest.warns(UserWarning, match="lower target_sparsity"):
        _, in_graph = ep.edge_pruning(ctx, target_sparsity=1.0, steps=2)
    assert not in_graph.any()
    with pytest.warns(UserWarning, match="raise target_sparsity"):
        ep.edge_pruning(ctx, target_sparsity=0.0, steps=2)
    with pytest.warns(UserWarning, match="raise steps or lr"):  # 3 steps cannot close 80% of the gates
        ep.edge_pruning(ctx, target_sparsity=0.8, steps=3, lr=0.01)


@pytest.mark.filterwarnings("ignore:edge pruning")
def test_checkpoint_resume_gives_the_same_result(setup, tmp_path, monkeypatch):
    ctx = _ctx(setup, "mean")
    ref = ep.edge_pruning(ctx, target_sparsity=0.8, steps=16, seed=1)

    class Stop(Exception):
        pass

    def hook(step):
        if step == 7:
            raise Stop

    with pytest.raises(Stop):
        ep.edge_pruning(ctx, target_sparsity=0.8, steps=16, seed=1, checkpoint=Checkpoint(tmp_path / "ep.pt", "k", every=0),
                        on_progress=hook)
    assert torch.load(tmp_path / "ep.pt", weights_only=False)["step"] == 7
    out = ep.edge_pruning(ctx, target_sparsity=0.8, steps=16, seed=1, checkpoint=Checkpoint(tmp_path / "ep.pt", "k"))
    assert torch.equal(out[0], ref[0]) and torch.equal(out[1], ref[1])


def test_discover_edge_pruning(setup):
    m, task = setup
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        g = circuits.discover(m, task, "edge-pruning", ablation="zero", target_sparsity=0.9, steps=10, batch_size=8)
    assert g.metadata["method"] == "edge-pruning" and g.metadata["result"]["n_selected"] == 11
    assert 0 < g.n_edges <= 11
    with pytest.raises(circuits.discovery.DiscoveryError):
        circuits.discover(m, task, "edge-pruning", target_sparsity=1.5, batch_size=8)
