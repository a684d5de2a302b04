"""Planted-circuit models: hand-set weights whose circuit is known by construction, and the exact check.

Construction. Every model here is an ordinary Hugging Face model (``circuits_attn_only`` or GPT-2) whose weights
are written by hand into named blocks of the residual stream (token one-hot, position one-hot, one block per
thing a head writes). Two devices make the construction exact:

* every written vector (embedding rows, head output directions) has zero mean over the residual dimensions
  (the last dimension balances it), so LayerNorm's mean subtraction is the identity on the stream;
* LayerNorm's epsilon is large (``1e6``) and its weight ``sqrt(eps)``, so ``LN(x) = x / sqrt(var(x) + eps) *
  sqrt(eps)`` equals ``x`` to a relative ``var(x) / (2 eps)`` (about 1e-8 here): the norm is linear.

A head reads only the blocks its weights name, so an edge whose sender writes no block the receiver reads has
no effect at all, and the ground truth is the set of edges that carry the task's information from the input to
the logits. "Distractor" heads are active (content-dependent attention, outputs that differ between clean and
corrupted prompts) but write only blocks that no circuit head and not the unembedding read.

Verification (:func:`verify_ground_truth`): with the task's own corrupted ablation, each edge of the graph is
cut alone (batched: ``C`` circuits per patched forward, masks ``[C, S, R]``) and the change of the task metric
is compared with the clean-corrupted gap: every ground-truth edge must move it by at least 5%, every other
edge by at most 1%. :func:`single_edge_effects` is the same computation returning scores in MIB's sign
(positive = cutting the edge lowers the metric), the core of exact patching as a discovery method.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd
    from transformers import GPT2LMHeadModel

    from circuits.graph.graph import Graph
    from circuits.models.attn_only import AttnOnlyForCausalLM
    from circuits.models.circuit_model import CircuitModel
    from circuits.tasks import Task

LN_EPS = 1e6
GT_MIN = 0.05  # every ground-truth edge, cut alone, moves the metric by at least this fraction of the gap
OTHER_MAX = 0.01  # every other edge by at most this


# ---- exact single-edge patching ------------------------------------------------------------------------------
@torch.no_grad()
def single_edge_effects(model: CircuitModel, task: Task, *, ablation: str = "corrupted", chunk: int = 64,
                        n: int | None = None, edges: Tensor | None = None) -> dict:
    """Exact effect of cutting each edge alone: ``M(full) - M(all edges but that one)`` (mean over examples).

    The computation of the ``exact`` discovery method (batched single-edge cuts), on the whole task or its
    first ``n`` pairs. ``edges [E, 2]`` (sender, receiver) defaults to every edge in MIB order. Returns a dict
    with ``effects [E]``, ``edges [E, 2]``, ``scores [S, R]`` (the effects as a score matrix, MIB's sign),
    ``full``, ``ablated`` (the metric with every edge cut) and ``gap = full - ablated``.
    """
    from circuits.discovery.exact import EdgeCuts, single_cut_effects
    from circuits.session import CircuitSession

    data = task if n is None else task[:n]
    if not task.base_metric.higher_is_better:
        raise ValueError("the ground-truth check reads a task metric (higher = better), not a divergence")
    session = CircuitSession(model, data, ablation=ablation, batch_size=len(data))
    full, cut_all = session.full_and_empty()
    cuts = EdgeCuts(model.structure, edges)
    effects = single_cut_effects(session, cuts, circuits_per_pass=chunk, description="ground-truth check")
    structure = model.structure
    scores = torch.zeros(structure.n_senders, structure.n_receivers, dtype=torch.float64)
    scores[cuts.order[:, 0], cuts.order[:, 1]] = effects
    return {"effects": effects, "edges": cuts.order, "scores": scores, "full": full, "ablated": cut_all,
            "gap": full - cut_all}


def verify_ground_truth(model: CircuitModel, task: Task, graph: Graph, *, ablation: str = "corrupted", chunk: int = 64,
                        n: int | None = None, gt_min: float = GT_MIN, other_max: float = OTHER_MAX) -> pd.DataFrame:
    """One row per edge: ``edge``, ``in_ground_truth``, ``effect`` (metric change when cut alone),
    ``relative`` (effect / clean-corrupted gap) and ``passes`` (GT: relative >= gt_min; other: |relative| <=
    other_max). ``df.attrs`` holds ``full``, ``ablated``, ``gap`` and ``all_pass``."""
    import pandas as pd

    out = single_edge_effects(model, task, ablation=ablation, chunk=chunk, n=n)
    edges = out["edges"]
    structure = model.structure
    in_gt = graph.in_graph[edges[:, 0], edges[:, 1]].cpu()
    rel = out["effects"] / out["gap"]
    passes = torch.where(in_gt, rel >= gt_min, rel.abs() <= other_max)
    df = pd.DataFrame({
        "edge": [structure.edge_name(s, r) for s, r in edges.tolist()],
        "in_ground_truth": in_gt.numpy(),
        "effect": out["effects"].numpy(),
        "relative": rel.numpy(),
        "passes": passes.numpy(),
    })
    df.attrs.update(full=out["full"], ablated=out["ablated"], gap=out["gap"], all_pass=bool(passes.all()))
    return df


# ---- hand-set weights ----------------------------------------------------------------------------------------
@dataclass
class Plan:
    """Per-head weights in the decomposed layout, written by hand, then copied into a Hugging Face model."""

    n_layers: int
    n_heads: int
    d: int
    vocab: int
    n_ctx: int
    W_Q: Tensor = field(init=False)  # [L, H, d, e]
    W_K: Tensor = field(init=False)
    W_V: Tensor = field(init=False)
    W_O: Tensor = field(init=False)  # [L, H, e, d]
    wte: Tensor = field(init=False)  # [V, d]
    wpe: Tensor = field(init=False)  # [n_ctx, d]
    W_U: Tensor = field(init=False)  # [d, V]

    def __post_init__(self):
        L, H, d = self.n_layers, self.n_heads, self.d
        e = self.e
        self.W_Q, self.W_K, self.W_V = (torch.zeros(L, H, d, e, dtype=torch.float64) for _ in range(3))
        self.W_O = torch.zeros(L, H, e, d, dtype=torch.float64)
        self.wte = torch.zeros(self.vocab, d, dtype=torch.float64)
        self.wpe = torch.zeros(self.n_ctx, d, dtype=torch.float64)
        self.W_U = torch.zeros(d, self.vocab, dtype=torch.float64)

    @property
    def e(self) -> int:
        return self.d // self.n_heads

    @property
    def scale(self) -> float:  # GPT-2's attention scale: raw scores are multiplied by it
        return self.e ** -0.5

    def balanced(self) -> "Plan":
        """Give every written vector zero mean (the last dimension is the balance)."""
        for t in (self.wte, self.wpe):
            t[:, -1] = -t[:, :-1].sum(-1)
        self.W_O[..., -1] = -self.W_O[..., :-1].sum(-1)
        self.W_U[-1] = 0.0
        return self

    def to_attn_only(self, bos: int, pad: int) -> AttnOnlyForCausalLM:
        from circuits.models.attn_only import AttnOnlyConfig, AttnOnlyForCausalLM

        cfg = AttnOnlyConfig(vocab_size=self.vocab, n_layer=self.n_layers, n_head=self.n_heads, d_model=self.d,
                             n_ctx=self.n_ctx, ln_eps=LN_EPS, attn_bias=True, bos_token_id=bos, eos_token_id=bos,
                             pad_token_id=pad)
        hf = AttnOnlyForCausalLM(cfg)
        d, H, e = self.d, self.n_heads, self.e
        with torch.no_grad():
            for p in hf.parameters():
                p.zero_()
            hf.wte.weight.copy_(self.wte)
            hf.wpe.weight.copy_(self.wpe)
            block: Any  # a ModuleList item, walked by attribute name
            for layer, block in enumerate(hf.blocks):
                a = block.attn
                for lin, W in ((a.q_proj, self.W_Q), (a.k_proj, self.W_K), (a.v_proj, self.W_V)):
                    lin.weight.copy_(W[layer].permute(0, 2, 1).reshape(H * e, d))
                a.o_proj.weight.copy_(self.W_O[layer].reshape(H * e, d).T)
                block.ln_1.weight.fill_(math.sqrt(LN_EPS))
            hf.ln_f.weight.fill_(math.sqrt(LN_EPS))
            hf.lm_head.weight.copy_(self.W_U.T)
        return hf.eval()

    def to_gpt2(self, bos: int, pad: int, d_mlp: int = 16) -> GPT2LMHeadModel:
        from transformers import GPT2Config, GPT2LMHeadModel

        cfg = GPT2Config(vocab_size=self.vocab, n_layer=self.n_layers, n_head=self.n_heads, n_embd=self.d,
                         n_inner=d_mlp, n_positions=self.n_ctx, layer_norm_epsilon=LN_EPS, resid_pdrop=0.0,
                         embd_pdrop=0.0, attn_pdrop=0.0, bos_token_id=bos, eos_token_id=bos, pad_token_id=pad,
                         tie_word_embeddings=False)
        hf = GPT2LMHeadModel(cfg)
        d, H, e = self.d, self.n_heads, self.e
        with torch.no_grad():
            for p in hf.parameters():
                p.zero_()
            body = hf.transformer
            body.wte.weight.copy_(self.wte)
            body.wpe.weight.copy_(self.wpe)
            block: Any  # a ModuleList item, walked by attribute name
            for layer, block in enumerate(body.h):
                cols = [W[layer].permute(1, 0, 2).reshape(d, H * e) for W in (self.W_Q, self.W_K, self.W_V)]
                block.attn.c_attn.weight.copy_(torch.cat(cols, dim=1))
                block.attn.c_proj.weight.copy_(self.W_O[layer].reshape(H * e, d))
                block.ln_1.weight.fill_(math.sqrt(LN_EPS))
                block.ln_2.weight.fill_(math.sqrt(LN_EPS))
            body.ln_f.weight.fill_(math.sqrt(LN_EPS))
            hf.lm_head.weight.copy_(self.W_U.T)
        return hf.eval()


class Blocks:
    """Named, consecutive ranges of residual dimensions."""

    def __init__(self, d: int, **sizes: int):
        self.ranges, start = {}, 0
        for name, size in sizes.items():
            self.ranges[name] = range(start, start + size)
            start += size
        if start > d - 1:
            raise ValueError(f"blocks need {start} dims plus the balance; d={d}")

    def __getitem__(self, name: str) -> range:
        return self.ranges[name]


# ---- planted-induction ---------------------------------------------------------------------------------------
INDUCTION_WORDS = 29
INDUCTION_TASK = """\
# The task planted-induction is built for: the built-in induction generator on this model's 29 words.
name = "planted-induction"
description = "Induction on random words: [BOS] prefix A A (clean) vs [BOS] prefix B A (corrupted); \
log p(next token) in the second copy"
generator = "induction"
metric = "logprob"

[options]
seq_len = 24
min_period = 4
max_period = 10
"""
INDUCTION_GT = ["input->a0.h0<v>", "a0.h0->a1.h0<k>", "input->a1.h0<v>", "a1.h0->logits"]


def induction_tokenizer():
    from circuits.tasks import word_level_tokenizer
    from circuits.zoo.induction import vocabulary

    return word_level_tokenizer(vocabulary(INDUCTION_WORDS))


def distractors(plan: Plan, b: Blocks, layer: int, heads: list[int], junk_in: str, junk_out: str, V: int, eff: float):
    """Active heads that never touch the circuit: a same-token head, a uniform-average head and a head two
    positions back in layer 0; in later layers heads that attend by (and copy) what earlier distractors wrote."""
    s = eff / plan.scale
    T, POS, JIN, JOUT = b["T"], b["POS"], b[junk_in], b[junk_out]
    for k, h in enumerate(heads):
        Q, K, Vw, Ow = plan.W_Q[layer, h], plan.W_K[layer, h], plan.W_V[layer, h], plan.W_O[layer, h]
        kind = (layer, k % 3)
        if kind[0] == 0 and kind[1] == 0:  # same token as here (incl. itself): a duplicate-token-like head
            for t in range(V):
                Q[T[t], t], K[T[t], t] = 0.5 * s, 1.0
        elif kind[1] == 1:  # uniform average of everything so far
            pass
        elif kind[0] == 0:  # two positions back
            for p in range(len(POS)):
                Q[POS[p], p] = s
                if p + 2 < len(POS):
                    K[POS[p], p + 2] = 1.0
        else:  # attends by the junk earlier distractors wrote
            for i in range(min(len(JIN), plan.e)):
                Q[JIN[i], i], K[JIN[i], i] = 0.5 * s, 1.0
        src = T if kind[0] == 0 or kind[1] != 2 else JIN
        for i in range(min(len(src), len(JOUT), plan.e)):
            Vw[src[i], i] = 1.0
            Ow[i, JOUT[(i + k) % len(JOUT)]] += 1.0


def build_planted_induction():
    """2 layers x 4 heads, attention-only. a0.h0: previous-token head (attends by position, copies the token
    into PREV); a1.h0: induction head (query: the current token; key: PREV; value: the token, written to OUT,
    which the unembedding reads). Heads 1-3 of each layer are distractors."""
    tok = induction_tokenizer()
    V, n_ctx, d, H = len(tok), 32, 256, 4
    plan = Plan(2, H, d, V, n_ctx)
    b = Blocks(d, T=V, POS=n_ctx, PREV=V, OUT=V, J0=V, J1=V)
    for t in range(V):
        plan.wte[t, b["T"][t]] = 1.0
    for p in range(n_ctx):
        plan.wpe[p, b["POS"][p]] = 1.0
    s = 40.0 / plan.scale  # logit gap of 40 between the attended position and the others
    # a0.h0: previous token
    Q, K, Vw, Ow = plan.W_Q[0, 0], plan.W_K[0, 0], plan.W_V[0, 0], plan.W_O[0, 0]
    for p in range(n_ctx):
        Q[b["POS"][p], p] = s
        if p + 1 < n_ctx:
            K[b["POS"][p], p + 1] = 1.0  # the key at position p answers the query at p + 1
    for t in range(V):
        Vw[b["T"][t], t] = 1.0
        Ow[t, b["PREV"][t]] = 1.0
    # a1.h0: induction
    Q, K, Vw, Ow = plan.W_Q[1, 0], plan.W_K[1, 0], plan.W_V[1, 0], plan.W_O[1, 0]
    for t in range(V):
        Q[b["T"][t], t] = s
        K[b["PREV"][t], t] = 1.0
        Vw[b["T"][t], t] = 1.0
        Ow[t, b["OUT"][t]] = 1.0
    distractors(plan, b, 0, [1, 2, 3], "J0", "J0", V, 10.0)
    distractors(plan, b, 1, [1, 2, 3], "J0", "J1", V, 10.0)
    for t in range(V):
        plan.W_U[b["OUT"][t], t] = 12.0
    hf = plan.balanced().to_attn_only(bos=tok.bos_token_id, pad=tok.pad_token_id)
    return hf, tok


# ---- planted-ioi ---------------------------------------------------------------------------------------------
IOI_NAMES = ["Mary", "John", "Anna", "Paul", "Sarah", "James", "Laura", "David", "Emma", "Peter", "Kate", "Tom"]
IOI_PLACES = ["store", "park", "school", "office"]
# One unit of the planted heads' attention logits. Their score gaps are 20-80 units; at 1.0 the patterns are
# saturated, gradients at the clean point vanish on the q/k edges, and EAP and 5-step EAP-IG miss them (AUROC
# 0.61 and 0.67, measured), an artefact of hand-set weights that trained models do not have. At 0.3 (gaps of
# 6-24) the patterns are still sharp (clean logit difference 9.7 of 10) and every edge's role is unchanged.
IOI_ATTENTION_UNIT = 0.3
IOI_TASK = """\
# The task planted-ioi is built for: IOI-style prompts in this model's small vocabulary, ACDC's ABC corruption.
name = "planted-ioi"
description = "IOI on 12 names: logit(IO) - logit(S) at the end; the corrupted prompt replaces IO, S and S2 \
by three fresh names"
templates = [
  "When {IO} and {S} went to the {PLACE} , {S2} gave a drink to {IO}",
  "When {S} and {IO} went to the {PLACE} , {S2} gave a book to {IO}",
  "Then , {IO} and {S} had a long argument . Afterwards {S2} said to {IO}",
  "Then , {S} and {IO} had a long argument . Afterwards {S2} said to {IO}",
]
answer = "IO"
distractor = "S"
metric = "logit_diff"
corrupt = ["IO", "S", "S2"]

[vocab]
names = [%s]

[slots]
IO = "names"
S = "names"
S2 = "=S"
PLACE = [%s]
""" % (", ".join(f'"{n}"' for n in IOI_NAMES), ", ".join(f'"{p}"' for p in IOI_PLACES))
IOI_GT = ["input->a0.h0<q>", "input->a0.h0<k>", "input->a0.h0<v>", "a0.h0->a1.h0<k>", "a0.h0->a1.h0<v>",
          "a1.h0->a2.h0<q>", "input->a2.h0<k>", "input->a2.h0<v>", "a2.h0->logits"]


def ioi_words() -> list[str]:
    from circuits.tasks.tokenization import split_words

    words = []
    for line in IOI_TASK.splitlines():
        if line.startswith("  \""):
            words += split_words(re.sub(r"\{[A-Z0-9]+\}", " ", line.strip().strip(",").strip('"')))
    return list(dict.fromkeys(words)) + IOI_NAMES + IOI_PLACES


def ioi_tokenizer():
    from circuits.tasks import word_level_tokenizer

    return word_level_tokenizer(ioi_words())


def build_planted_ioi():
    """3 layers x 4 heads, GPT-2 (MLPs present, weights zero). a0.h0: duplicate-token head (at S2 it attends to
    S1 and writes S's identity into DUP plus a flag); a1.h0: S-inhibition head (at the end it attends to the
    flagged position and moves DUP into INH); a2.h0: name mover (attends to names, except the one in INH, and
    copies the name to OUT, read by the unembedding). Heads 1-3 of each layer are distractors. Attention logits
    are in units of ``IOI_ATTENTION_UNIT`` (sharp, not saturated)."""
    tok = ioi_tokenizer()
    vocab = tok.get_vocab()
    V, n_ctx, d, H = len(tok), 32, 256, 4
    names = [vocab[n] for n in IOI_NAMES]
    N = len(names)
    plan = Plan(3, H, d, V, n_ctx)
    b = Blocks(d, T=V, POS=n_ctx, ONE=1, ISNAME=1, ISBOS=1, DUP=N, DUPFLAG=1, INH=N, OUT=N, J0=V, J1=V, J2=V)
    one, isname, isbos = b["ONE"][0], b["ISNAME"][0], b["ISBOS"][0]
    for t in range(V):
        plan.wte[t, b["T"][t]] = 1.0
        plan.wte[t, one] = 1.0
    for t in names:
        plan.wte[t, isname] = 1.0
    plan.wte[tok.bos_token_id, isbos] = 1.0
    for p in range(n_ctx):
        plan.wpe[p, b["POS"][p]] = 1.0
    u = IOI_ATTENTION_UNIT / plan.scale  # one unit of attention logit
    # a0.h0: duplicate token. score = 40 [same name earlier] + 20 [BOS] - 80 [itself]
    Q, K, Vw, Ow = plan.W_Q[0, 0], plan.W_K[0, 0], plan.W_V[0, 0], plan.W_O[0, 0]
    for i, t in enumerate(names):
        Q[b["T"][t], i] = 40 * u
        K[b["T"][t], i] = 1.0
        Vw[b["T"][t], i] = 1.0
        Ow[i, b["DUP"][i]] = 1.0
    Q[one, N], K[isbos, N] = 20 * u, 1.0
    for p in range(n_ctx):
        Q[b["POS"][p], N + 1 + p], K[b["POS"][p], N + 1 + p] = -80 * u, 1.0
    Vw[isname, N] = 1.0
    Ow[N, b["DUPFLAG"][0]] = 1.0
    # a1.h0: S-inhibition. score = 40 [flagged] + 20 [BOS]; moves DUP into INH
    Q, K, Vw, Ow = plan.W_Q[1, 0], plan.W_K[1, 0], plan.W_V[1, 0], plan.W_O[1, 0]
    Q[one, 0], K[b["DUPFLAG"][0], 0] = 40 * u, 1.0
    Q[one, 1], K[isbos, 1] = 20 * u, 1.0
    for i in range(N):
        Vw[b["DUP"][i], i] = 1.0
        Ow[i, b["INH"][i]] = 1.0
    # a2.h0: name mover. score = 20 [a name] - 40 [the inhibited name]; copies the name to OUT
    Q, K, Vw, Ow = plan.W_Q[2, 0], plan.W_K[2, 0], plan.W_V[2, 0], plan.W_O[2, 0]
    Q[one, N], K[isname, N] = 20 * u, 1.0
    for i, t in enumerate(names):
        Q[b["INH"][i], i] = -40 * u
        K[b["T"][t], i] = 1.0
        Vw[b["T"][t], i] = 1.0
        Ow[i, b["OUT"][i]] = 1.0
    for layer, (jin, jout) in enumerate((("J0", "J0"), ("J0", "J1"), ("J1", "J2"))):
        distractors(plan, b, layer, [1, 2, 3], jin, jout, V, 10.0)
    for i, t in enumerate(names):
        plan.W_U[b["OUT"][i], t] = 10.0
    hf = plan.balanced().to_gpt2(bos=tok.bos_token_id, pad=tok.pad_token_id)
    return hf, tok


PLANTED = {
    "planted-induction": (build_planted_induction, INDUCTION_TASK, INDUCTION_GT),
    "planted-ioi": (build_planted_ioi, IOI_TASK, IOI_GT),
}


def task_path(folder: Path) -> Path:
    return Path(folder) / "task.toml"


def build_planted(name: str):
    """(hf model, tokenizer, task TOML text, ground-truth edge names) of a planted model."""
    builder, task_text, gt = PLANTED[name]
    hf, tok = builder()
    return hf, tok, task_text, gt
