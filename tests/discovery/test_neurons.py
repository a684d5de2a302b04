"""Neuron-level circuits (issue 20, point 3): the neuron-masked forward against independent references (Hugging Face
hooks on the MLPs' output projections), and neuron scores against their definitions."""

from __future__ import annotations

import pytest
import torch

import circuits
from circuits.discovery import discover
from circuits.graph.selection import edges_between
from circuits.interventions.ablation import build_ablation
from circuits.interventions.masked import MaskedResidual
from circuits.interventions.neurons import NeuronMasked, hidden_ablation, record_hidden
from circuits.session import CircuitSession
from circuits.tasks import task_vocabulary, word_level_tokenizer
from tests.discovery.conftest import perturbed_random_model

ARCHS = {"gpt2": {}, "llama": {"n_kv_heads": 2}}


@pytest.fixture(scope="module")
def tokenizer():
    return word_level_tokenizer(task_vocabulary())


def small_model(tokenizer, arch="gpt2", dtype=torch.float64):
    return perturbed_random_model(tokenizer, arch, 2, dtype=dtype, **ARCHS[arch])


def output_projection(model, layer: int):
    """The Hugging Face module whose input is the MLP's hidden activations (GPT-2 ``c_proj``, Llama ``down_proj``)."""
    if model.spec.family == "gpt2":
        return model.hf.transformer.h[layer].mlp.c_proj
    return model.hf.model.layers[layer].mlp.down_proj


def neuron_run(model, ids, corrupted, neurons, edges=None, ablation="corrupted"):
    """Logits ``[C, B, P, V]`` of neuron circuits ``neurons [C, L, m]`` (edges: every edge unless given)."""
    s = model.structure
    C = neurons.shape[0]
    edges = s.edge_mask.to(model.dtype).expand(C, *s.edge_mask.shape) if edges is None else edges
    ablated = build_ablation(model, ablation, ids, corrupted_ids=corrupted, reference_ids=corrupted)
    hidden = hidden_ablation(model, ablation, ids, corrupted_ids=corrupted, reference_ids=corrupted)
    strategy = NeuronMasked(MaskedResidual(edges, ablated), neurons.to(model.dtype), hidden)
    return model.run(ids, residual=strategy).logits


def random_pair(model, B=3, P=7, seed=0):
    gen = torch.Generator().manual_seed(seed)
    V = model.spec.token_embed.shape[0]
    return torch.randint(V, (B, P), generator=gen), torch.randint(V, (B, P), generator=gen)


@pytest.mark.parametrize("arch", list(ARCHS))
@pytest.mark.parametrize("ablation", ["corrupted", "mean"])
def test_all_ones_is_the_model_and_all_zeros_cuts_every_mlp(tokenizer, arch, ablation):
    model = small_model(tokenizer, arch, dtype=torch.float32)
    ids, corrupted = random_pair(model)
    s = model.structure
    L, m = record_hidden(model, ids).shape[0], record_hidden(model, ids).shape[-1]
    out = neuron_run(model, ids, corrupted, torch.stack([torch.ones(L, m), torch.zeros(L, m)]), ablation=ablation)
    hf = model.hf(ids).logits
    assert torch.allclose(out[0], hf, atol=1e-5)
    nodes = torch.ones(s.n_nodes, dtype=torch.bool)
    nodes[[s.mlp_sender(layer) for layer in range(L)]] = False  # every MLP node cut, every head kept
    ablated = build_ablation(model, ablation, ids, corrupted_ids=corrupted, reference_ids=corrupted)
    mlp_cut = model.patched_logits(ids, edges_between(s, nodes).float(), ablated)
    assert torch.allclose(out[1], mlp_cut, atol=1e-5)
    assert (out[1] - hf).abs().max() > 1e-2  # the MLPs matter on this model: not a vacuous comparison


@pytest.mark.parametrize("arch", list(ARCHS))
def test_one_cut_neuron_equals_a_hugging_face_hook(tokenizer, arch):
    """The independent reference: Hugging Face's own forward with the output projection's input at one neuron
    replaced by its value in the corrupted run."""
    model = small_model(tokenizer, arch, dtype=torch.float32)
    ids, corrupted = random_pair(model, seed=1)
    L, m = 2, model.spec.layers[0].mlp.d_hidden
    cuts = [(0, 3), (1, m - 1), (1, 17)]
    neurons = torch.ones(len(cuts), L, m)
    for c, (layer, i) in enumerate(cuts):
        neurons[c, layer, i] = 0
    ours = neuron_run(model, ids, corrupted, neurons)
    for c, (layer, i) in enumerate(cuts):
        seen = {}
        proj = output_projection(model, layer)
        handle = proj.register_forward_pre_hook(lambda mod, args: seen.setdefault("h", args[0].detach().clone()))
        with torch.no_grad():
            model.hf(corrupted)
        handle.remove()

        def patch(mod, args, i=i):
            h = args[0].clone()
            h[..., i] = seen["h"][..., i]
            return (h,)

        handle = proj.register_forward_pre_hook(patch)
        with torch.no_grad():
            reference = model.hf(ids).logits
        handle.remove()
        assert torch.allclose(ours[c], reference, atol=1e-5), (layer, i)
        assert (reference - model.hf(ids).logits).abs().max() > 1e-6, "the cut changes the logits"


def neuron_mask_gradient(model, task):
    """``dM/dn`` at ``n = 1`` by autograd through the neuron-masked forward, averaged over pairs."""
    batch = task.as_batch()
    s = model.structure
    ablated = build_ablation(model, "corrupted", batch.clean, batch.attention_mask, corrupted_ids=batch.corrupted)
    hidden = hidden_ablation(model, "corrupted", batch.clean, batch.attention_mask, corrupted_ids=batch.corrupted)
    L, m = hidden.shape[0], hidden.shape[-1]
    n = torch.ones(L, m, dtype=model.dtype, requires_grad=True)
    strategy = NeuronMasked(MaskedResidual(s.edge_mask.to(model.dtype), ablated), n, hidden)
    logits = model.run(batch.clean, batch.attention_mask, residual=strategy).logits
    task.base_metric(logits, batch).sum().backward()
    return n.grad / len(task)


def metric_with_neuron_mask(model, task, n):
    batch = task.as_batch()
    logits = neuron_run(model, batch.clean, batch.corrupted, n[None])[0]
    return float(task.base_metric(logits, batch).double().mean())


@pytest.mark.parametrize("arch", list(ARCHS))
def test_eap_neurons_is_the_derivative_of_the_metric_in_the_neuron_mask(tokenizer, arch):
    model = small_model(tokenizer, arch)
    task = circuits.load_task("ioi", model, n=8, seed=0)
    g = discover(model, task, "eap-neurons", split="all", batch_size=3)
    scores = g.neuron_scores.double()
    reference = neuron_mask_gradient(model, task)
    assert torch.allclose(scores, reference, rtol=1e-4, atol=1e-6 * reference.abs().max())
    assert (scores != 0).float().mean() > 0.9
    L, m = scores.shape
    eps = 1e-2  # the metric is float32: a smaller step drowns in its rounding; the step's own error is O(eps^2)
    for flat in torch.topk(scores.abs().flatten(), 3).indices.tolist():  # finite differences, central
        layer, i = divmod(flat, m)
        up, down = torch.ones(L, m, dtype=torch.float64), torch.ones(L, m, dtype=torch.float64)
        up[layer, i], down[layer, i] = 1 + eps, 1 - eps
        fd = (metric_with_neuron_mask(model, task, up) - metric_with_neuron_mask(model, task, down)) / (2 * eps)
        assert float(scores[layer, i]) == pytest.approx(fd, rel=5e-4, abs=1e-6), (layer, i)


@pytest.mark.parametrize("method,params", [("eap-neurons", {}), ("eap-ig-neurons", {"steps": 3})])
@pytest.mark.parametrize("ablation", ["corrupted", "mean"])
def test_an_mlps_neurons_sum_to_its_node_score(tokenizer, method, params, ablation):
    """Its output is linear in its neurons, so the neurons' products add up to the MLP's own (node) score."""
    model = small_model(tokenizer, "llama")
    task = circuits.load_task("ioi", model, n=8, seed=1)
    g = discover(model, task, method, split="all", ablation=ablation, batch_size=4, **params)
    s = model.structure
    for layer in range(s.n_layers):
        node = float(g.node_scores[s.mlp_sender(layer)])
        assert float(g.neuron_scores[layer].double().sum()) == pytest.approx(node, rel=1e-5, abs=1e-8)
        assert abs(node) > 1e-3


def test_eap_ig_neurons_equal_integrated_gradients_of_hugging_face(tokenizer):
    """EAP-IG's neuron scores from Hugging Face's forward: input embeddings interpolated corrupted -> clean at
    k / steps, the gradient at the output projection's input, averaged over steps, times h(clean) - h(corrupted)."""
    model = small_model(tokenizer, "gpt2")
    task = circuits.load_task("ioi", model, n=6, seed=2)
    steps = 4
    ours = discover(model, task, "eap-ig-neurons", split="all", steps=steps).neuron_scores.double()
    batch = task.as_batch()
    wte = model.hf.transformer.wte.weight.detach()
    L = model.structure.n_layers

    def hidden_and_grads(embeds):
        hs = {}

        def keep(layer):
            def hook(mod, args):
                args[0].retain_grad()  # kept in the graph: gradients of earlier layers flow through later MLPs
                hs[layer] = args[0]
            return hook

        handles = [output_projection(model, layer).register_forward_pre_hook(keep(layer)) for layer in range(L)]
        embeds = embeds.clone().requires_grad_(True)
        logits = model.hf(inputs_embeds=embeds, attention_mask=batch.attention_mask).logits
        task.base_metric(logits, batch).sum().backward()
        for h in handles:
            h.remove()
        return {k: (v.detach(), v.grad) for k, v in hs.items()}

    clean, corrupted = wte[batch.clean], wte[batch.corrupted]
    h_clean, h_corr = hidden_and_grads(clean), hidden_and_grads(corrupted)
    grads = {layer: 0.0 for layer in range(L)}
    for k in range(steps):
        run = hidden_and_grads(corrupted + (k / steps) * (clean - corrupted))
        for layer in range(L):
            grads[layer] = grads[layer] + run[layer][1]
    reference = torch.stack([((h_clean[layer][0] - h_corr[layer][0]) * grads[layer] / steps).sum((0, 1)) / len(task)
                             for layer in range(L)])
    assert torch.allclose(ours, reference, rtol=1e-4, atol=1e-6 * reference.abs().max())


def test_neuron_patching_equals_manual_single_cuts(tokenizer):
    model = small_model(tokenizer, "gpt2")
    task = circuits.load_task("ioi", model, n=6, seed=3)
    g = discover(model, task, "neuron-patching", split="all", batch_size=4, circuits_per_pass=20)
    nodes = discover(model, task, "node-patching", split="all", batch_size=4)
    assert torch.allclose(g.node_scores[:-1], nodes.node_scores[:-1], rtol=1e-5, atol=1e-8)
    L, m = g.neuron_scores.shape
    full = metric_with_neuron_mask(model, task, torch.ones(L, m, dtype=torch.float64))
    for layer, i in [(0, 0), (0, 45), (1, 99), (1, m - 1)]:
        n = torch.ones(L, m, dtype=torch.float64)
        n[layer, i] = 0
        assert float(g.neuron_scores[layer, i]) == pytest.approx(full - metric_with_neuron_mask(model, task, n),
                                                                 rel=1e-4, abs=1e-7), (layer, i)
    assert (g.neuron_scores != 0).float().mean() > 0.9


def test_neuron_methods_refuse_models_without_mlps():
    model = circuits.load_model("zoo:planted-induction", device="cpu")
    task = circuits.load_task(circuits.zoo.task_file("planted-induction"), model, n=8, seed=0)
    with pytest.raises(circuits.session.SessionError, match="no MLPs"):
        discover(model, task, "eap-neurons", split="all")


def test_neuron_session_rejects_masks_of_the_wrong_shape(tokenizer):
    from circuits.session.neurons import NeuronRuns

    model = small_model(tokenizer)
    task = circuits.load_task("ioi", model, n=4, seed=0)
    runs = NeuronRuns(CircuitSession(model, task))
    s = model.structure
    with pytest.raises(circuits.session.SessionError, match="neuron masks must be"):
        runs.circuit_metrics(s.edge_mask[None].float(), torch.ones(1, 2, 5))


def test_neuron_patching_resumes_from_a_checkpoint_to_the_same_result(tokenizer, tmp_path, interrupt_after_saves):
    """Interrupted among the neuron passes (after every node pass), run again: the scores of an uninterrupted run,
    bit for bit; a checkpoint of another run is refused."""
    from circuits.discovery.neurons import NeuronPatchingPlan

    model = small_model(tokenizer, dtype=torch.float32)
    task = circuits.load_task("ioi", model, n=6, seed=4)
    kwargs = dict(split="all", batch_size=4, circuits_per_pass=40)
    reference = discover(model, task, "neuron-patching", **kwargs)
    plan = NeuronPatchingPlan(CircuitSession(model, task, split="all", batch_size=4), 40)
    ckpt = tmp_path / "neurons.ckpt"
    interrupt_after_saves(len(plan.node_passes) + 2)
    with pytest.raises(KeyboardInterrupt):
        discover(model, task, "neuron-patching", checkpoint=ckpt, **kwargs)
    state = torch.load(ckpt, weights_only=False)
    # units are (batch, pass), batch after batch: stopped midway through the first batch's neuron passes
    assert len(plan.node_passes) < state["next_unit"] < len(plan)
    interrupt_after_saves(None)
    resumed = discover(model, task, "neuron-patching", checkpoint=ckpt, **kwargs)
    assert torch.equal(resumed.neuron_scores, reference.neuron_scores)
    assert torch.equal(resumed.node_scores.nan_to_num(), reference.node_scores.nan_to_num())
    assert not ckpt.exists(), "a finished run removes its checkpoint"
    interrupt_after_saves(1)
    with pytest.raises(KeyboardInterrupt):
        discover(model, task, "neuron-patching", checkpoint=ckpt, **kwargs)
    interrupt_after_saves(None)
    with pytest.raises(circuits.discovery.checkpoint.CheckpointMismatchError, match="different run"):
        discover(model, task, "neuron-patching", checkpoint=ckpt, **{**kwargs, "circuits_per_pass": 20})
