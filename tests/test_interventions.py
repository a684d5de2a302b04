"""Edge interventions on every supported architecture: parity, patching identities, a naive reference,
gradients and padding (issue 2, point 4)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from circuits.interventions.ablation import AblationError, ablated_outputs
from circuits.models.architectures import TransformerSpec
from tests.conftest import tiny_model

B, P, V = 3, 7, 64


def _ids(seed: int, shape=(B, P)) -> torch.Tensor:
    return torch.randint(0, V, shape, generator=torch.Generator().manual_seed(seed))


def test_decomposed_forward_equals_hugging_face(arch):
    model = tiny_model(arch)
    ids = _ids(0)
    ref = model.hf(ids).logits
    assert torch.allclose(model.logits(ids), ref, atol=1e-4), (model.logits(ids) - ref).abs().max()


def test_all_ones_is_clean_and_all_zeros_is_ablated(arch):
    model = tiny_model(arch)
    s = model.structure
    clean, corrupted = _ids(1), _ids(2)
    ablated = ablated_outputs(model, "corrupted", clean, corrupted_ids=corrupted)
    ones = model.patched_logits(clean, torch.ones(s.n_senders, s.n_receivers), ablated)
    zeros = model.patched_logits(clean, torch.zeros(s.n_senders, s.n_receivers), ablated)
    assert torch.allclose(ones, model.logits(clean), atol=1e-5)
    assert torch.allclose(zeros, model.logits(corrupted), atol=1e-5)


def test_batch_of_circuits_equals_one_at_a_time(arch):
    model = tiny_model(arch)
    s = model.structure
    clean, corrupted = _ids(3), _ids(4)
    ablated = ablated_outputs(model, "corrupted", clean, corrupted_ids=corrupted)
    masks = torch.rand(3, s.n_senders, s.n_receivers, generator=torch.Generator().manual_seed(0))
    batched = model.patched_logits(clean, masks, ablated)  # [3, B, P, V]
    for c in range(3):
        assert torch.allclose(batched[c], model.patched_logits(clean, masks[c], ablated), atol=1e-5)


def test_skipping_idle_nodes_changes_nothing(arch):
    """Sparse binary circuits (a few random edges each; some nodes with no input, some with no output) run
    with idle nodes skipped equal the same circuits with every node computed (masks that require grad
    disable skipping), also when the forward starts from held clean outputs."""
    from circuits.interventions.ablation import Ablated
    from circuits.interventions.masked import HeldCircuit, IncrementalResidual, MaskedResidual, active_senders

    model = tiny_model(arch)
    s = model.structure
    clean, corrupted = _ids(5), _ids(6)
    ablated = ablated_outputs(model, "corrupted", clean, corrupted_ids=corrupted)
    gen = torch.Generator().manual_seed(1)
    masks = (torch.rand(4, s.n_senders, s.n_receivers, generator=gen) < 0.15).float() * s.edge_mask
    masks[-1] = s.edge_mask.float()  # and a full circuit in the same pass
    active = active_senders(s, masks[:3], ablated_is_a_run=True)
    assert 1 < int(active.sum()) < s.n_senders  # the sparse circuits really leave nodes idle
    ref = model.patched_logits(clean, masks.clone().requires_grad_(True), ablated).detach()
    for with_run in (False, True):
        kind = "corrupted" if with_run else "given"
        skipped = model.run(clean, residual=MaskedResidual(masks[:3], Ablated(ablated, kind))).logits
        assert torch.allclose(skipped, ref[:3], atol=1e-5), (with_run, (skipped - ref[:3]).abs().max())
    # ACDC's state: every edge into receivers before layer 1 kept; the rest sparse; start from the held outputs
    start = s.attn_receivers(1).start
    acdc_masks = masks.clone()
    acdc_masks[:, :, :start] = s.edge_mask[:, :start].float()
    ref = model.patched_logits(clean, acdc_masks.clone().requires_grad_(True), ablated).detach()
    cached = HeldCircuit.of_model(s, model.sender_outputs(clean))
    run = IncrementalResidual(acdc_masks, Ablated(ablated, "corrupted"), cached)
    fast = model.run(clean, residual=run).logits
    later = torch.arange(s.n_senders) >= s.head_sender(1, 0)  # at most the senders from layer 1 on are computed
    assert not bool((run.computed & ~later).any())
    assert torch.allclose(fast, ref, atol=1e-5)
    # a recorded run of one circuit gives the reference circuit's outputs: with them, a circuit that differs only
    # in one node's incoming edges needs that node and its descendants computed, nothing else
    one = acdc_masks[0]
    recording = MaskedResidual(one, Ablated(ablated, "corrupted"), record=True)
    held = model.run(clean, residual=recording).sender_outputs  # [S, B, P, d]
    node = s.head_sender(1, 2)
    variant = one.clone()
    variant[: s.head_sender(1, 0), s.qkv_receiver(1, 2, "v")] = 0.0
    ref = model.patched_logits(clean, variant.clone().requires_grad_(True), ablated).detach()
    computed = torch.arange(s.n_senders) >= node  # the node and everything after it (a superset of its descendants)
    computed[s.head_sender(1, 0):node] = False
    exact = torch.tensor(recording.active)
    run = IncrementalResidual(variant, Ablated(ablated, "corrupted"), HeldCircuit(one, held, exact))
    fast = model.run(clean, residual=run).logits
    assert not bool((run.computed & ~computed).any())
    assert torch.allclose(fast, ref, atol=1e-5), (fast - ref).abs().max()


def test_strategy_preconditions_fail_loudly():
    """What the old flags let a caller get wrong now fails when the strategy is built, or cannot be said."""
    from circuits.interventions.ablation import Ablated, build_ablation
    from circuits.interventions.masked import HeldCircuit, IncrementalResidual, MaskedResidual

    model = tiny_model("gpt2")
    s = model.structure
    clean, reference = _ids(5), _ids(7, (8, P))
    mean = build_ablation(model, "mean", clean, reference_ids=reference)
    assert mean.kind == "mean" and not mean.is_a_run  # means are never treated as a run
    with pytest.raises(AblationError, match="unknown ablation kind"):
        Ablated(mean.values, "mean-but-a-run")
    # mean ablation with sparse circuits: a node with no kept input is still computed (its output is not its mean)
    gen = torch.Generator().manual_seed(3)
    masks = (torch.rand(3, s.n_senders, s.n_receivers, generator=gen) < 0.2).float() * s.edge_mask
    ref = model.patched_logits(clean, masks.clone().requires_grad_(True), mean.values).detach()
    out = model.run(clean, residual=MaskedResidual(masks, mean)).logits
    assert torch.allclose(out, ref, atol=1e-5)
    with pytest.raises(ValueError, match="records one run"):
        MaskedResidual(masks, mean, record=True)
    with pytest.raises(ValueError, match="without gradients"):
        IncrementalResidual(masks.clone().requires_grad_(True), mean,
                            HeldCircuit.of_model(s, model.sender_outputs(clean)))
    with pytest.raises(ValueError, match="not of this batch"):
        model.run(clean[:2], residual=IncrementalResidual(masks, mean, HeldCircuit.of_model(s, model.sender_outputs(clean))))
    with pytest.raises(TypeError):
        model.run(clean, masks=masks, ablated=mean.values, ablated_is_a_run=True)  # the old flag is gone


# ---- an independent reference: recompute one receiver's input with one sender swapped -------------------------
def _naive_swap_forward(spec: TransformerSpec, ids: torch.Tensor, ablated: torch.Tensor, sender: int,
                        receiver: int, position: int | None = None) -> torch.Tensor:
    """Plain forward, head by head with SDPA; only ``receiver`` reads ``ablated[sender]`` instead of the
    sender's own output (at ``position`` only, if given). Shares no code with the masked residual."""
    s = spec.structure
    n_batch, n_pos = ids.shape
    pos = torch.arange(n_pos).expand(n_batch, n_pos)
    x0 = spec.token_embed[ids] + (spec.pos_embed[pos] if spec.pos_embed is not None else 0)
    outs = [x0]  # every sender's output so far, in sender order

    def reads(r: int) -> torch.Tensor:
        resid = torch.stack(outs).sum(0) + bias_so_far[0]
        if r == receiver:
            at = slice(None) if position is None else slice(position, position + 1)
            resid = resid.clone()
            resid[:, at] = (resid - outs[sender] + ablated[sender].expand_as(resid))[:, at]
        return resid

    bias_so_far = [torch.zeros(())]
    causal = torch.ones(n_pos, n_pos, dtype=torch.bool).tril()
    for layer_idx, layer in enumerate(spec.layers):
        a = layer.attn
        H, G = a.n_heads, a.n_kv_heads
        heads = []
        for h in range(H):
            g = h // (H // G)
            q_in, k_in, v_in = (layer.attn_norm(reads(s.qkv_receiver(layer_idx, h, w))) for w in "qkv")
            q = q_in @ a.W_Q[h] + (a.b_Q[h] if a.b_Q is not None else 0)
            k = k_in @ a.W_K[g] + (a.b_K[g] if a.b_K is not None else 0)
            v = v_in @ a.W_V[g] + (a.b_V[g] if a.b_V is not None else 0)
            if a.rotary is not None:
                cos, sin = a.rotary(q, pos)
                r = cos.shape[-1]

                def rot(t):
                    t1, t2 = t[..., :r // 2], t[..., r // 2:r]
                    return torch.cat([t[..., :r] * cos + torch.cat([-t2, t1], -1) * sin, t[..., r:]], -1)
                q, k = rot(q), rot(k)
            z = F.scaled_dot_product_attention(q, k, v, attn_mask=causal, scale=a.scale)
            heads.append(z @ a.W_O[h])
        mlp_reads_before_heads = spec.parallel_attn_mlp
        if mlp_reads_before_heads:
            mlp_in = reads(s.mlp_receiver(layer_idx))
        outs.extend(heads)
        if a.b_O is not None:
            bias_so_far[0] = bias_so_far[0] + a.b_O
        if not mlp_reads_before_heads:
            mlp_in = reads(s.mlp_receiver(layer_idx))
        outs.append(layer.mlp(layer.mlp_norm(mlp_in)))
    final = spec.final_norm(reads(s.logits_receiver))
    return final @ spec.W_U + (spec.b_U if spec.b_U is not None else 0)


def _edges_to_check(s):
    """A spread of edges: into q, k, v, an MLP and the logits, from input, heads and MLPs."""
    last = s.n_layers - 1
    return [
        ("input", f"a0.h1<q>"), ("input", f"a{last}.h2<k>"), ("a0.h3", f"a{last}.h0<v>"),
        ("m0", f"a{last}.h1<q>"), ("a0.h0", "m0") if not s.parallel_attn_mlp else ("a0.h0", "m1"),
        ("input", "m0"), (f"a{last}.h3", "logits"), (f"m{last}", "logits"), ("m0", f"m{last}"),
    ]


def test_cutting_one_edge_equals_naive_swap(arch):
    model = tiny_model(arch)
    s = model.structure
    clean, corrupted = _ids(5), _ids(6)
    ablated = ablated_outputs(model, "corrupted", clean, corrupted_ids=corrupted)
    with torch.no_grad():
        for s_name, r_name in _edges_to_check(s):
            snd, rcv = s.edge_index(f"{s_name}->{r_name}")
            mask = torch.ones(s.n_senders, s.n_receivers)
            mask[snd, rcv] = 0
            patched = model.patched_logits(clean, mask, ablated)
            naive = _naive_swap_forward(model.spec, clean, ablated, snd, rcv)
            assert torch.allclose(patched, naive, atol=1e-5), (s_name, r_name, (patched - naive).abs().max())
            assert not torch.allclose(patched, model.logits(clean), atol=1e-4), "the edge should matter"


def test_mask_gradients_match_finite_differences(arch):
    model = tiny_model(arch, dtype=torch.float64)
    s = model.structure
    clean, corrupted = _ids(7), _ids(8)
    ablated = ablated_outputs(model, "corrupted", clean, corrupted_ids=corrupted)
    base = torch.rand(s.n_senders, s.n_receivers, generator=torch.Generator().manual_seed(1), dtype=torch.float64)

    def metric(m):  # a scalar that depends on every logit
        logits = model.patched_logits(clean, m, ablated)
        return (logits[:, -1, 3] - logits[:, -1, 5]).mean() + logits.pow(2).mean()

    masks = base.clone().requires_grad_(True)
    metric(masks).backward()
    grad = masks.grad
    eps = 1e-6
    for s_name, r_name in _edges_to_check(s):
        i, j = s.edge_index(f"{s_name}->{r_name}")
        plus, minus = base.clone(), base.clone()
        plus[i, j] += eps
        minus[i, j] -= eps
        with torch.no_grad():
            fd = (metric(plus) - metric(minus)) / (2 * eps)
        assert torch.allclose(grad[i, j], fd, rtol=1e-5, atol=1e-8), (s_name, r_name, grad[i, j], fd)
    # gradients exist on every real edge, and none leak to pairs that are not edges
    assert (grad[~s.edge_mask] == 0).all()
    assert (grad[s.edge_mask] != 0).float().mean() > 0.9


def _pad(rows: list[torch.Tensor], side: str) -> tuple[torch.Tensor, torch.Tensor]:
    n = max(len(r) for r in rows)
    ids = torch.zeros(len(rows), n, dtype=torch.long)
    mask = torch.zeros(len(rows), n, dtype=torch.long)
    for i, r in enumerate(rows):
        sl = slice(0, len(r)) if side == "right" else slice(n - len(r), n)
        ids[i, sl], mask[i, sl] = r, 1
    return ids, mask


@pytest.mark.parametrize("side", ["left", "right"])
def test_padding_does_not_change_real_positions(arch, side):
    model = tiny_model(arch)
    s = model.structure
    lengths = [7, 4, 5]
    clean = [_ids(10 + i, (n,)) for i, n in enumerate(lengths)]
    corrupted = [_ids(20 + i, (n,)) for i, n in enumerate(lengths)]
    ids, mask = _pad(clean, side)
    cids, _ = _pad(corrupted, side)
    plain = model.logits(ids, mask)
    masks = torch.rand(s.n_senders, s.n_receivers, generator=torch.Generator().manual_seed(2))
    ablated = ablated_outputs(model, "corrupted", ids, mask, corrupted_ids=cids)
    patched = model.patched_logits(ids, masks, ablated, attention_mask=mask)
    for i, n in enumerate(lengths):
        real = mask[i].bool()
        alone = model.logits(clean[i][None])[0]
        assert torch.allclose(plain[i, real], alone, atol=1e-5)
        alone_abl = ablated_outputs(model, "corrupted", clean[i][None], corrupted_ids=corrupted[i][None])
        alone_patched = model.patched_logits(clean[i][None], masks, alone_abl)[0]
        assert torch.allclose(patched[i, real], alone_patched, atol=1e-5)


def test_hugging_face_agrees_on_left_padding_with_position_ids(arch):
    """Our positions count real tokens; HF given the same positions and mask gives the same logits."""
    model = tiny_model(arch)
    ids, mask = _pad([_ids(30, (6,)), _ids(31, (3,))], "left")
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    ref = model.hf(ids, attention_mask=mask, position_ids=positions).logits
    ours = model.logits(ids, mask)
    assert torch.allclose(ours[mask.bool()], ref[mask.bool()], atol=1e-4)


def test_mean_and_zero_ablation(arch):
    model = tiny_model(arch)
    s = model.structure
    clean = _ids(40)
    reference = _ids(41, (10, P))
    mean = ablated_outputs(model, "mean", clean, reference_ids=reference)
    assert mean.shape == (s.n_senders, 1, P, s.d_model)
    expected = model.sender_outputs(reference).mean(1, keepdim=True)
    assert torch.allclose(mean, expected, atol=1e-5)
    # all-zero masks under mean ablation: every receiver reads the sum of mean sender outputs
    zeros = torch.zeros(s.n_senders, s.n_receivers)
    out = model.patched_logits(clean, zeros, mean)
    assert torch.allclose(out[0], out[1], atol=1e-5), "with every edge mean-ablated the input no longer matters"
    zero = ablated_outputs(model, "zero", clean)
    assert zero.abs().sum() == 0 and zero.shape == (s.n_senders, 1, 1, s.d_model)
    out0 = model.patched_logits(clean, zeros, zero)
    assert torch.allclose(out0[0], out0[1], atol=1e-5)


def test_ablation_errors_name_the_problem():
    model = tiny_model("gpt2")
    with pytest.raises(AblationError, match="same token length"):
        ablated_outputs(model, "corrupted", _ids(0), corrupted_ids=_ids(1, (B, P + 1)))
    with pytest.raises(AblationError, match="corrupted prompts"):
        ablated_outputs(model, "corrupted", _ids(0))
    with pytest.raises(AblationError, match="choose one of corrupted, mean, zero"):
        ablated_outputs(model, "resample", _ids(0))
    s = model.structure
    with pytest.raises(ValueError, match=r"masks must be \[S, R\]"):
        model.patched_logits(_ids(0), torch.ones(3, 3), ablated_outputs(model, "zero", _ids(0)))


def test_logit_positions_unembed_only_what_is_read(arch):
    model = tiny_model(arch)
    s = model.structure
    clean, corrupted = _ids(50), _ids(51)
    at = torch.tensor([[6, 2], [0, 5], [3, 3]])
    ablated = ablated_outputs(model, "corrupted", clean, corrupted_ids=corrupted)
    masks = torch.rand(2, s.n_senders, s.n_receivers, generator=torch.Generator().manual_seed(3))
    full = model.patched_logits(clean, masks, ablated)  # [2, B, P, V]
    picked = model.patched_logits(clean, masks, ablated, logit_positions=at)  # [2, B, 2, V]
    expected = full.gather(2, at[None, ..., None].expand(2, *at.shape, full.shape[-1]))
    assert picked.shape == (2, B, 2, V) and torch.allclose(picked, expected, atol=1e-6)
    plain = model.logits(clean, logit_positions=at)
    assert torch.allclose(plain, model.logits(clean).gather(1, at[..., None].expand(*at.shape, V)), atol=1e-6)
    with torch.no_grad():  # no gradient: the last layer (queries, head outputs, MLP) runs at the read positions only
        assert torch.allclose(model.patched_logits(clean, masks, ablated, logit_positions=at), expected, atol=1e-6)
        assert torch.allclose(model.logits(clean, logit_positions=at), plain, atol=1e-6)


def test_receivers_with_the_same_masks_share_one_mix(arch):
    """Single-edge cuts leave every receiver but the cut one with the same masks in every circuit: those read one
    shared mix (a layer's q, k, v and MLP inputs become one stream). Same logits as with gradients on the masks,
    where each receiver keeps its own mix."""
    from circuits.interventions.masked import MaskedResidual

    model = tiny_model(arch)
    s = model.structure
    clean, corrupted = _ids(60), _ids(61)
    ablated = ablated_outputs(model, "corrupted", clean, corrupted_ids=corrupted)
    edges = s.edge_order[torch.randperm(s.n_edges, generator=torch.Generator().manual_seed(5))[:4]]
    masks = s.edge_mask.float()[None].repeat(4, 1, 1)
    masks[torch.arange(4), edges[:, 0], edges[:, 1]] = 0.0  # [4, S, R]: one cut each
    with torch.no_grad():
        shared = model.patched_logits(clean, masks, ablated)
    own = model.patched_logits(clean, masks.clone().requires_grad_(True), ablated)
    assert torch.allclose(shared, own.detach(), atol=1e-5)

    residual = MaskedResidual(masks, ablated)
    residual.begin(model.spec.token_embed[clean], s)
    residual.n_written = s.n_senders  # every sender written: compare the receivers' whole columns
    layer0 = list(range(s.attn_receivers(0).start, s.attn_receivers(0).stop))
    cut = [r for r in layer0 if bool((masks[:, :, r] != s.edge_mask.float()[:, r]).any())]
    unique, inverse = residual._same_mix(layer0)
    assert len(unique) == len(set(cut)) + (len(cut) < len(layer0))  # each cut receiver alone, the rest together
    untouched = [i for i, r in enumerate(layer0) if r not in cut]
    assert len({int(inverse[i]) for i in untouched}) <= 1
