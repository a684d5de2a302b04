"""Position-aware discovery (issue 20, points 1-2): EAP / EAP-IG scores per edge and position, and exact
patching of one edge at one position, against identities and an independent reference."""

from __future__ import annotations

import pytest
import torch

from circuits.discovery.attribution import eap, eap_ig, eap_ig_activations
from circuits.discovery.exact import exact
from circuits.session import CircuitSession, PositionAlignmentError
from circuits.tasks.metrics import Metric
from tests.conftest import tiny_model
from tests.evaluation.conftest import tiny_task
from tests.test_interventions import _edges_to_check, _naive_swap_forward
from tests.test_position_masks import aligned_task

METHODS = {"eap": eap, "eap-ig": lambda s, **kw: eap_ig(s, steps=3, **kw),
           "eap-ig-activations": lambda s, **kw: eap_ig_activations(s, steps=2, **kw)}


@pytest.mark.parametrize("method", list(METHODS))
@pytest.mark.parametrize("arch, options", [("gpt2", {}), ("gpt2", {"position_chunk": 3}), ("llama", {}),
                                           ("llama", {"grouped_kv": True}), ("gpt_neox", {})])
def test_position_scores_sum_to_the_position_free_ones(method, arch, options):
    model = tiny_model(arch)
    session = CircuitSession(model, aligned_task(), split="all", batch_size=5, **options)
    free = METHODS[method](session)
    by_position = METHODS[method](session, positions=True)
    s = session.structure
    assert by_position.shape == (s.n_senders, s.n_receivers, session.n_positions)
    torch.testing.assert_close(by_position.sum(-1), free, rtol=1e-5, atol=1e-6)
    assert float(by_position.abs().amax((0, 1)).min()) < float(by_position.abs().max()), "positions differ"


def test_position_eap_is_the_derivative_of_each_position_mask():
    """EAP at (S, R, p) is dM/dm[S, R, p] at m = 1: central differences of patched runs (a float64 model; the
    metric itself is float32, so the step is 1e-3 and the tolerance 1e-3 relative: a wrong position or formula
    is off by far more)."""
    model = tiny_model("gpt2", dtype=torch.float64)
    session = CircuitSession(model, aligned_task(), split="all", batch_size=6)
    scores = eap(session, positions=True)
    s, L = session.structure, session.n_positions
    flat = scores.flatten().abs().argsort(descending=True)[:4].tolist() + [int(scores.flatten().abs().argmin())]
    eps = 1e-3
    for i in flat:
        snd, rcv, p = torch.unravel_index(torch.tensor(i), scores.shape)
        plus, minus = torch.ones(2, s.n_senders, s.n_receivers, L, dtype=torch.float64)
        plus[snd, rcv, p], minus[snd, rcv, p] = 1 + eps, 1 - eps
        obj = session.objective_of(torch.stack([plus, minus])).mean(1)
        fd = float(obj[0] - obj[1]) / (2 * eps)
        assert abs(fd - float(scores[snd, rcv, p])) <= 1e-6 + 1e-3 * abs(fd), (s.edge_name(snd, rcv), int(p))


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_position_exact_equals_naive_patching_at_one_position(arch):
    """The reference: a plain head-by-head forward in which only the receiver, at that position only, reads the
    sender's ablated output (it shares no code with the masked residual or the session's runs)."""
    model = tiny_model(arch)
    session = CircuitSession(model, aligned_task(), split="all", batch_size=6)
    scores = exact(session, positions=True)
    s, L = session.structure, session.n_positions
    assert scores.shape == (s.n_senders, s.n_receivers, L)
    assert bool(torch.isfinite(scores).all())
    with torch.no_grad():
        for s_name, r_name in _edges_to_check(s):
            snd, rcv = s.edge_index(f"{s_name}->{r_name}")
            for p in (1, 4, L - 1):
                total = 0.0
                for b in session.batches:
                    P = b.clean.shape[1]
                    if p >= P:  # the cut is after every read position of this batch: no effect
                        continue
                    logits = _naive_swap_forward(model.spec, b.clean, session.ablated(b).values, snd, rcv, p)
                    read = logits[torch.arange(len(b))[:, None], b.positions]  # [b, K, V]
                    full = session.metric_full[b.index]
                    total += float((full - session.metric_values(read, b).double()).sum())
                expected = total / session.n_examples
                got = float(scores[snd, rcv, p])
                assert abs(got - expected) <= 1e-5 + 1e-5 * abs(expected), (s_name, r_name, p, got, expected)
    # summed over positions, single-position cuts are not the edge's cut (interactions), but both see the edge
    free = exact(session)
    assert bool(((free != 0) <= (scores != 0).any(-1)).all())


def test_position_methods_refuse_pairs_of_several_lengths():
    session = CircuitSession(tiny_model("gpt2"), tiny_task(n=8), split="all")
    for method in (eap, eap_ig, exact):
        with pytest.raises(PositionAlignmentError, match="task.aligned"):
            method(session, positions=True)


@pytest.fixture(scope="module")
def induction_match():
    """zoo:attn-only-2l on induction with the `match` corruption at one index: every pair is read at one position
    (20 = the second copy's token 3), and the corruption sits at position 12 (the first copy's token 3)."""
    import circuits

    model = circuits.load_model("zoo:attn-only-2l")
    task = circuits.load_task("induction", model, n=24, corruption="match", min_period=8, max_period=8, replaced=3,
                              seq_len=24)
    assert bool((task.positions[:, 0] == 20).all())
    return model, task


def test_position_acdc_keeps_edges_where_the_effect_is(induction_match):
    from circuits.discovery.acdc import acdc

    model, task = induction_match
    session = CircuitSession(model, task, split="all")
    scores, in_graph = acdc(session, threshold=0.05, positions=True)
    s, L = session.structure, session.n_positions
    assert scores.shape == in_graph.shape == (s.n_senders, s.n_receivers, L)
    result = session.extras["acdc"]
    logits = s.receiver_index("logits")
    kept_at = in_graph.any(0).any(0).nonzero().flatten().tolist()  # positions with a kept edge
    assert bool(in_graph[:, logits, 20].any()) and not bool(in_graph[:, logits, :20].any())
    assert set(kept_at) <= {12, 13, 20}, kept_at  # the corrupted token, the token after it, the read position
    # the circuit's own objective (KL to the model) is what the search ended at, and the plain one-at-a-time
    # search takes the same decisions
    kl = session.circuit_metrics(in_graph.float()[None], metric=Metric("kl")).metric.mean()
    assert abs(float(kl) + result["final_objective"]) < 1e-5  # the objective of KL is -KL
    _, one = acdc(CircuitSession(model, task, split="all"), threshold=0.05, positions=True, one_at_a_time=True)
    assert torch.equal(one, in_graph)


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_half_precision_position_scores_cast_a_few_positions_at_a_time(arch, monkeypatch):
    """bf16 position-aware EAP casts its sender buffer to float32 a few positions at a time (the chunk bound
    FP32_CHUNK_ELEMENTS), never whole: one position per chunk gives the scores of one chunk for all, and a
    smaller tracked peak than casting the whole buffer at once."""
    from circuits.interventions import probe
    from tests.memory_tracking import StoragePeak

    model = tiny_model(arch, dtype=torch.bfloat16)
    session = CircuitSession(model, aligned_task(), split="all", batch_size=6)
    session.ablated(session.batches[0])
    peaks, scores = [], []
    for chunk in (2**40, 1):  # everything at once; one position at a time
        monkeypatch.setattr(probe, "FP32_CHUNK_ELEMENTS", chunk)
        with StoragePeak() as tracked:
            scores.append(eap(session, positions=True))
        peaks.append(tracked.peak)
    assert scores[0].dtype == torch.float32 and torch.isfinite(scores[0]).all()
    torch.testing.assert_close(scores[1], scores[0], rtol=1e-6, atol=1e-7)
    assert peaks[1] < peaks[0], peaks
