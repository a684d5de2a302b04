"""Position-aware edge masks ``[C, S, R, P]`` (issue 20, point 1): the patched forward against an independent
reference, the session's per-batch slicing, and the alignment a position axis needs."""

from __future__ import annotations

import pytest
import torch

from circuits.interventions.ablation import ablated_outputs
from circuits.interventions.masked import PositionMaskedResidual
from circuits.session import CircuitSession, PositionAlignmentError, SessionError
from circuits.tasks.errors import TaskError
from circuits.tasks.metrics import Metric
from circuits.tasks.task import Task, build_batch
from tests.conftest import tiny_model
from tests.evaluation.conftest import tiny_task
from tests.test_interventions import _edges_to_check, _ids, _naive_swap_forward

TOL = dict(atol=1e-5, rtol=1e-5)


def test_masks_equal_at_every_position_are_the_edge_masks(arch):
    model = tiny_model(arch)
    s = model.structure
    clean, corrupted = _ids(1), _ids(2)
    P = clean.shape[1]
    ablated = ablated_outputs(model, "corrupted", clean, corrupted_ids=corrupted)
    masks = torch.rand(3, s.n_senders, s.n_receivers, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        edge = model.patched_logits(clean, masks, ablated)
        position = model.patched_logits(clean, masks[..., None].expand(-1, -1, -1, P).contiguous(), ablated)
    torch.testing.assert_close(position, edge, **TOL)


def test_cutting_one_edge_at_one_position_equals_a_naive_swap_there(arch):
    """The reference swaps the sender's output for its ablated one in the receiver's input at that position
    only (a plain head-by-head forward sharing no code with the masked residual)."""
    model = tiny_model(arch)
    s = model.structure
    clean, corrupted = _ids(5), _ids(6)
    P = clean.shape[1]
    ablated = ablated_outputs(model, "corrupted", clean, corrupted_ids=corrupted)
    with torch.no_grad():
        for s_name, r_name in _edges_to_check(s):
            snd, rcv = s.edge_index(f"{s_name}->{r_name}")
            for p in (0, 3, P - 1):
                mask = torch.ones(s.n_senders, s.n_receivers, P)
                mask[snd, rcv, p] = 0
                patched = model.patched_logits(clean, mask, ablated)
                naive = _naive_swap_forward(model.spec, clean, ablated, snd, rcv, position=p)
                torch.testing.assert_close(patched, naive, **TOL, msg=f"{s_name}->{r_name} @ {p}")
    # and the cut is felt where causality says: at p and after it only
    snd, rcv = s.edge_index(f"input->a{s.n_layers - 1}.h0<v>")
    mask = torch.ones(s.n_senders, s.n_receivers, P)
    mask[snd, rcv, 3] = 0
    with torch.no_grad():
        diff = (model.patched_logits(clean, mask, ablated) - model.logits(clean)).abs().amax((0, 2))  # [P]
    assert float(diff[:3].max()) < 1e-5 and float(diff[3:].min()) > 1e-3


def test_preconditions_fail_loudly():
    model = tiny_model("gpt2")
    s = model.structure
    clean, corrupted = _ids(1), _ids(2)
    ablated = ablated_outputs(model, "corrupted", clean, corrupted_ids=corrupted)
    with pytest.raises(ValueError, match="without gradients"):
        PositionMaskedResidual(torch.ones(s.n_senders, s.n_receivers, 7, requires_grad=True), ablated)
    with pytest.raises(ValueError, match="P=7 positions of this batch"):
        model.patched_logits(clean, torch.ones(s.n_senders, s.n_receivers, 5), ablated)


def aligned_task(n: int = 12, length: int = 8, seed: int = 0, vocab: int = 64) -> Task:
    """Pairs of one length whose read position varies (so the session cuts its batches at different lengths)."""
    g = torch.Generator().manual_seed(seed)
    clean, corrupted, readouts = [], [], []
    for i in range(n):
        c = torch.randint(3, vocab, (length,), generator=g).tolist()
        k = torch.randint(3, vocab, (length,), generator=g).tolist()
        a, d = torch.randperm(vocab - 3, generator=g)[:2].add(3).tolist()
        clean.append(c)
        corrupted.append(k)
        readouts.append([(3 + i % (length - 3), [a], [d])])
    return Task(name="aligned", data=build_batch(clean, corrupted, readouts, 0), base_metric=Metric("logit_diff"),
                tokenizer=None, seed=seed)


@pytest.mark.parametrize("ablation", ["corrupted", "mean"])
def test_session_runs_position_masks_batch_by_batch(ablation):
    model = tiny_model("llama")
    task = aligned_task()
    session = CircuitSession(model, task, split="all", batch_size=4, ablation=ablation)
    s, L = model.structure, session.n_positions
    assert L == 8 and len({b.clean.shape[1] for b in session.batches}) > 1, "batches are cut at different lengths"
    g = torch.Generator().manual_seed(1)
    edge = (torch.rand(3, s.n_senders, s.n_receivers, generator=g) > 0.4).float()
    position = (torch.rand(2, s.n_senders, s.n_receivers, L, generator=g) > 0.3).float()
    masks = torch.cat([edge[..., None].expand(-1, -1, -1, L), position])  # [5, S, R, L]
    got = session.circuit_metrics(masks, kl=True)
    torch.testing.assert_close(got.metric[:3], session.circuit_metrics(edge).metric, atol=1e-5, rtol=1e-5)
    for b in session.batches:  # the two position-aware ones, by hand: one patched forward per batch
        P = b.clean.shape[1]
        logits = model.patched_logits(b.clean, position[..., :P], session.ablated(b), b.attention_mask,
                                      logit_positions=b.positions)
        torch.testing.assert_close(got.metric[3:, b.index], session.metric_values(logits, b).double(),
                                   atol=1e-5, rtol=1e-5)
    full = session.circuit_metrics(torch.ones(s.n_senders, s.n_receivers, L)).metric[0]
    torch.testing.assert_close(full, session.metric_full.double(), atol=1e-6, rtol=0)
    with pytest.raises(SessionError, match=r"\[C, .*, 8\]"):
        session.circuit_metrics(torch.ones(1, s.n_senders, s.n_receivers, 7))


def test_unaligned_tasks_name_the_option_that_aligns_them():
    model = tiny_model("gpt2")
    task = tiny_task(n=16)  # lengths 5..8
    session = CircuitSession(model, task, split="all")
    with pytest.raises(PositionAlignmentError, match=r"task.aligned\(\) \(CLI: --align-positions\)"):
        _ = session.n_positions
    aligned = task.aligned()
    lengths = task.data.lengths
    L = int(aligned.data.lengths[0])
    assert bool((aligned.data.lengths == L).all()) and aligned.clean.shape[1] == L
    assert len(aligned) == int(lengths.bincount().max()) == int((lengths == L).sum())  # the most common length
    assert CircuitSession(model, aligned, split="all").n_positions == aligned.clean.shape[1]
    assert len(task.aligned(5)) == int((lengths == 5).sum())
    with pytest.raises(TaskError, match="no pair of 40 tokens"):
        task.aligned(40)


def test_induction_match_at_one_index_reads_every_pair_at_one_position():
    import circuits

    model = circuits.load_model("zoo:attn-only-2l")
    task = circuits.load_task("induction", model, n=16, corruption="match", min_period=6, max_period=6,
                              replaced=2, seq_len=20)
    first = 1 + 20 - 6  # BOS + prefix + first copy: where the second copy starts
    assert bool((task.positions[:, 0] == first + 2).all()) and task.positions.shape[1] == 1
    assert CircuitSession(model, task, split="all").n_positions == 21
    differs = (task.clean != task.corrupted).nonzero()[:, 1]
    assert bool((differs == 1 + 20 - 12 + 2).all()), "only the first copy's token 2 is replaced"
    with pytest.raises(TaskError, match="replaced=5"):
        circuits.load_task("induction", model, n=4, corruption="match", min_period=6, max_period=6, replaced=5)
    with pytest.raises(TaskError, match="corruption='match'"):
        circuits.load_task("induction", model, n=4, replaced=1)
