"""The bundled models: how each is made (trained or constructed), evaluated, described and written."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from circuits.zoo.common import ZOO_ROOT, n_params, read_meta, save_model_folder

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd

    from circuits.models.circuit_model import CircuitModel

MODELS = {
    "attn-only-2l": "2-layer attention-only transformer trained on variable-period induction (real induction heads)",
    "gpt2-tasks": "4-layer GPT-2 trained on IOI + greater-than + induction in the tasks' word-level vocabulary",
    "planted-induction": "hand-set 2-layer attention-only induction circuit with distractor heads; "
                         "ground truth shipped",
    "planted-ioi": "hand-set 3-layer GPT-2 IOI circuit (duplicate-token, S-inhibition, name mover); "
                   "ground truth shipped",
}
DEFAULT_STEPS = {"attn-only-2l": 2500, "gpt2-tasks": None}  # None: the trainer's default


def _table(rows: list[dict], cols: list[str]) -> str:
    out = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    out += ["| " + " | ".join(str(r.get(c, "")) for c in cols) + " |" for r in rows]
    return "\n".join(out)


def make(name: str, out: Path | None = None, steps: int | None = None, seed: int = 0, progress: bool = True) -> dict:
    """Train (or construct) ``name`` and write its folder; returns the metadata written to ``zoo.json``."""
    if name not in MODELS:
        raise KeyError(f"unknown zoo model {name!r}; choose one of {', '.join(MODELS)}")
    out = Path(out) if out is not None else ZOO_ROOT / name
    if name == "attn-only-2l":
        from circuits.zoo import induction as I

        return _make_attn_only(out, steps or DEFAULT_STEPS[name] or I.DEFAULT_STEPS, seed, progress)
    if name == "gpt2-tasks":
        from circuits.zoo import tasks_model as T

        return _make_gpt2_tasks(out, steps or DEFAULT_STEPS[name] or T.DEFAULT_STEPS, seed, progress)
    return _make_planted(name, out)


def _make_attn_only(out: Path, steps: int, seed: int, progress: bool) -> dict:
    from circuits.models.circuit_model import CircuitModel
    from circuits.zoo import induction as I
    from circuits.zoo.analysis import induction_report

    hf, tok, info = I.train(steps=steps, seed=seed, progress=progress)
    model = CircuitModel.from_hf(hf, tok, name="zoo:attn-only-2l")
    acc = I.evaluate(model)
    report = induction_report(model)
    meta = {"name": "attn-only-2l", "architecture": "circuits_attn_only", **I.SHAPE, "vocab_size": len(tok),
            "training": info, "accuracy": acc, "accuracy_key": "held_out_periods",
            "heads": report}
    card = _attn_only_card(meta, report, n_params(hf))
    save_model_folder(hf, tok, out, meta, card)
    results = Path("results/zoo")
    if results.parent.is_dir():
        results.mkdir(parents=True, exist_ok=True)
        (results / "attn-only-2l.md").write_text(card)
    return read_meta(out)


def _attn_only_card(meta: dict, report: dict, params: int) -> str:
    from circuits.zoo import induction as I

    t = meta["training"]
    acc = meta["accuracy"]
    return f"""# attn-only-2l: 2-layer attention-only induction model ({params:,} parameters)

**Architecture**: `circuits_attn_only` (circuits.models.attn_only): GPT-2-style pre-LayerNorm attention-only
transformer, {meta['n_layer']} layers x {meta['n_head']} heads, d_model {meta['d_model']}, head dim
{meta.get('head_dim') or meta['d_model'] // meta['n_head']} (each head projects the whole residual stream: `head_dim`
is independent of d_model / n_head), fixed sinusoidal positions ({meta['n_ctx']} positions, base {I.POS_BASE:g},
frozen in training), no MLPs, untied unembedding.
History: the first shipped version had one head of dim 64 per layer (6000 steps); with one head there is no
"other head" to compare, and every edge of its single chain was needed. Two heads of dim 32 per layer took ~10x
longer to leave the loss plateau and found a duplicate-token mechanism with no previous-token head. Three heads
of dim 64 with the sinusoidal base 100 and periods 3-15 learned a look-back-3 mechanism (layer-0 heads reading
3-4 tokens back, layer-1 heads attending 3 tokens after the earlier occurrence). Base {I.POS_BASE:g} (short
wavelengths: one position back is cheap to single out) plus period 2 in training (where only the previous token
locates the answer) gave the textbook previous-token -> induction-head mechanism, leaving the plateau in ~500-1000
steps, but with the induction pattern copied by all three layer-1 heads (no single one mattered). From
{I.PENALTY_FROM:.0%} of the run on, a penalty {I.HEAD_PENALTY:g} x sum over heads of sqrt(||W_O of the head||)
(concave in a head's scale, so one head per role is cheaper than several) makes one head carry each role and
silences the others (weaker weights, 0.002 and 0.02, left two or three layer-1 heads sharing the induction role).
The silenced heads keep their attention patterns (scores below) but write almost nothing.
Graph: {1 + meta['n_layer'] * meta['n_head']} senders (input + {meta['n_layer'] * meta['n_head']} heads),
attention-only MIB convention (`has_mlp=False`).

**Tokenizer**: word-level, {len(I.vocabulary())} random two-letter words (`{I.vocabulary()[0]}` ..
`{I.vocabulary()[-1]}`) plus `[PAD]` `[UNK]` `[BOS]`; BOS prepended.

**Training data**: the project's induction generator (`load_task("induction", tok, seq_len=L, min_period=P,
max_period=P)`): `[BOS] prefix A A` with random distinct words, periods P in {I.TRAIN_PERIODS} and lengths L from
2P to {I.MAX_LEN} (so the second copy starts anywhere; lengths with at most 6 tokens before the first copy are
4 times as frequent). Loss: cross-entropy of the next token in the second copy. Periods {I.HELD_OUT_PERIODS} \
(and {I.LONGER_PERIODS}, longer than any training period) are never
trained on.

**Training**: {t['steps']} steps, batch {t['batch_size']}, AdamW lr {t['lr']} (warm-up 100 steps, constant to 60%,
then linear decay to 10%), no weight decay, head penalty {I.HEAD_PENALTY:g} from step
{int(I.PENALTY_FROM * t['steps'])} (above), seed {t['seed']}, CPU, measured {t['train_seconds']} s of training
({t['steps'] / max(t['train_seconds'], 1e-9):.2f} steps/s) on a shared 2-core machine \
(1 thread, other jobs running). Reproduce: `circuits zoo train
attn-only-2l --seed {t['seed']} --steps {t['steps']}`.

**Held-out accuracy** (arg-max at every second-copy position is the token after the first occurrence, length 40,
200 fresh sequences per period): held-out periods {acc['held_out_periods']:.1%}, longer periods
{acc['longer_periods']:.1%}, training periods {acc['train_periods']:.1%}.

## Heads

Previous-token score: mean attention to the previous position; induction score: mean attention from a token of
the second copy to the token after its first occurrence (held-out periods 7, 10, 13).
Ablation: the head's output replaced by its per-position mean over 200 other sequences (all its edges at once).

{_table([{**s, **{k: v for k, v in a.items() if k != 'head'}}
         for s, a in zip(report['scores'], report['ablations'][1:])],
        ['head', 'prev_token_score', 'induction_score', 'accuracy', 'accuracy_drop', 'metric_drop', 'destroyed'])}

Clean accuracy on these sequences: {report['ablations'][0]['accuracy']:.1%}. Best previous-token head in layer 0:
**{report['best_prev_token_head']}**; best induction head in layer 1: **{report['best_induction_head']}**. Heads
whose ablation alone leaves less than half the clean accuracy: **{', '.join(report['destroying_heads']) or 'none'}**.

Load: `circuits.load_model("zoo:attn-only-2l")`; task: `circuits.load_task("induction", model, n=200,
seq_len=40, min_period=7, max_period=13)`.
"""


def _make_gpt2_tasks(out: Path, steps: int, seed: int, progress: bool) -> dict:
    from circuits.models.circuit_model import CircuitModel
    from circuits.zoo import tasks_model as T

    hf, tok, info = T.train(steps=steps, seed=seed, progress=progress)
    info["threads"] = torch.get_num_threads()
    model = CircuitModel.from_hf(hf, tok, name="zoo:gpt2-tasks")
    acc = T.evaluate(model)
    meta = {"name": "gpt2-tasks", "architecture": "gpt2", **T.SHAPE, "vocab_size": len(tok),
            "tied_embeddings": T.TIED, "training": info, "accuracy": acc, "accuracy_key": "min_task"}
    meta["accuracy"]["min_task"] = min(acc[k] for k in T.TASKS)
    card = _gpt2_tasks_card(meta, n_params(hf))
    save_model_folder(hf, tok, out, meta, card)
    results = Path("results/zoo")
    if results.parent.is_dir():
        results.mkdir(parents=True, exist_ok=True)
        (results / "gpt2-tasks.md").write_text(card)
    return read_meta(out)


def _gpt2_tasks_card(meta: dict, params: int) -> str:
    from circuits.zoo import tasks_model as T

    t, a = meta["training"], meta["accuracy"]
    L, H, d = meta["n_layer"], meta["n_head"], meta["n_embd"]
    mlp = meta.get("n_inner") or 4 * d
    b = t["batch_size_per_task"]
    periods = list(T.IND_PERIODS)
    unembed = "tied unembedding (= token embedding)" if meta.get("tied_embeddings") else "untied unembedding"
    return f"""# gpt2-tasks: a {L}-layer GPT-2 carrying IOI, greater-than and induction ({params:,} parameters)

**Architecture**: transformers' `GPT2LMHeadModel`: {L} layers x {H} heads, d_model {d} (head dim {d // H}),
MLP {mlp}, {meta['n_positions']} positions (fixed sinusoidal, base {T.POS_BASE:g}, frozen in training), \
{unembed}, no dropout.
Graph (MIB convention): {L} x {H} heads + {L} MLPs.

**Tokenizer**: `circuits.tasks.word_level_tokenizer(circuits.tasks.task_vocabulary())` ({meta['vocab_size']} tokens:
the words of the IOI and greater-than templates, 99 names, places, objects, nouns, "00".."99"); BOS prepended.

**Training data**: the built-in generators `load_task("ioi" | "greater-than" | "induction", tok, ...)`, a batch of
each per step. Held-out split (made here; the task package has no hold-out option): one in five (template, IO
name) combinations of IOI and one in five (noun, YY) combinations of greater-than (a fixed CRC32 hash,
`circuits.zoo.common.held_out`) never appear in training ({t['n_data']} generated prompts per task before the
split). Induction: `load_task("induction", tok, seq_len=L, min_period=P, max_period=P)` with random distinct
words, periods P in {periods[0]}..{periods[-1]} and every length L from 2P to {T.IND_MAX_LEN} \
(prefix length uniform; for
{T.SHORT_FRACTION:.0%} of the sequences at most 6 tokens), drawn fresh every step by a vectorised sampler of the same
distribution (`tasks_model.induction_sampler`), so no sequence repeats; it is evaluated on fresh random sequences
of the generator itself (length 40, periods 5-15).
Loss: the sum over tasks of the cross-entropy at each read position: of IO for IOI, of the next token in the
second copy for induction, and for greater-than against a uniform target over the years above YY.

**Training**: {t['steps']} steps: the first {t.get('induction_only_steps', 0)} on induction alone (batch
{b['induction']}), then all three tasks each step (batch per task {', '.join(f'{k} {v}' for k, v in b.items())}).
For the first {t.get('prev_token_supervision_steps', 0)} steps an auxiliary loss (weight {T.AUX_WEIGHT:g}, its gradient
added after clipping) trains only the query and key weights of layer-0 head 0 to attend to the previous position
(cross-entropy of its attention pattern; the layer input is detached): a documented training aid that shortens
the previous-token head's formation. The induction head itself, and every output (OV) weight, is learned from the
task loss alone. AdamW lr {t['lr']} (warm-up 100 steps, constant to {T.HOLD:.0%}, then linear decay to 10%), weight
decay {t.get('weight_decay', 0.0)}, weight init std {T.INIT_RANGE:g}, gradient clipping 1.0, seed {t['seed']}, CPU,
measured {t['train_seconds']} s of training loop on a shared 2-core machine ({t.get('threads', '?')} threads, other jobs
running). Reproduce: `circuits zoo train gpt2-tasks --seed {t['seed']} --steps {t['steps']} --threads 2`.

**Held-out accuracy** (600 fresh prompts per task, held-out combinations only for IOI and greater-than):

| task | top-1 accuracy | pairwise |
|---|---|---|
| IOI (arg-max = IO; pairwise: logit(IO) > logit(S)) | {a['ioi']:.1%} | {a.get('ioi_pairwise', 0):.1%} |
| greater-than (arg-max is a year > YY; pairwise: p(> YY) > p(<= YY)) | {a['greater-than']:.1%} | \
{a.get('greater-than_pairwise', 0):.1%} |
| induction (arg-max = next token, every second-copy position; length 40, periods 5-15) | {a['induction']:.1%} | |

Greater-than's top-1 criterion is lenient (any year above YY counts, and most YY leave many); the pairwise column
(probability mass above YY larger than at or below it) is the stricter one. Neither shows whether the model reads
YY at all (always answering "99" passes both), so the contrast the circuits are found for is checked too: the task
metric on clean minus on corrupted prompts is {a.get('ioi_gap', float('nan')):.2f} for IOI (logit difference) and
{a.get('greater-than_gap', float('nan')):.2f} for greater-than (probability difference; corrupted YY = 01). \
Greater-than is
trained against a uniform target over the years above YY (`tasks_model.answer_set_loss`): the answer set's total
mass alone is minimised by always answering "99", which a first version did (gap 0.00).

Load: `circuits.load_model("zoo:gpt2-tasks")`; tasks: `circuits.load_task("ioi", model)` etc.
"""


def _make_planted(name: str, out: Path) -> dict:
    from circuits.graph.graph import Graph
    from circuits.models.circuit_model import CircuitModel
    from circuits.tasks import load_task
    from circuits.zoo.planted import build_planted, task_path, verify_ground_truth

    start = time.time()
    hf, tok, task_text, gt = build_planted(name)
    model = CircuitModel.from_hf(hf, tok, name=f"zoo:{name}")
    out.mkdir(parents=True, exist_ok=True)
    task_path(out).write_text(task_text)
    task = load_task(str(task_path(out)), model, n=64, seed=1)
    graph = Graph.from_edges(model.structure, gt, metadata={"model": f"zoo:{name}", "ground_truth": True,
                                                           "task": "task.toml (in the model folder)"})
    df = verify_ground_truth(model, task, graph)
    if not df.attrs["all_pass"]:
        raise RuntimeError(f"{name}: the planted ground truth fails the exact-patching check:\n"
                           f"{df[~df.passes].to_string()}")
    graph.set_scores(torch.tensor(0.0).new_tensor(_score_matrix(model, df)))
    graph.save(out / "ground_truth.json")
    others = df[~df.in_ground_truth]
    meta = {"name": name, "architecture": hf.config.model_type, "n_layer": len(model.spec.layers),
            "n_head": model.structure.n_heads, "d_model": model.structure.d_model, "vocab_size": len(tok),
            "training": {"constructed": True, "seconds": round(time.time() - start, 1)},
            "accuracy": {"metric_full": round(df.attrs["full"], 4), "metric_ablated": round(df.attrs["ablated"], 4)},
            "accuracy_key": None, "ground_truth": gt,
            "check": {"n_edges": len(df), "min_gt_relative": round(float(df[df.in_ground_truth].relative.min()), 4),
                      "max_other_abs_relative": round(float(others.relative.abs().max()), 6)}}
    save_model_folder(hf, tok, out, meta, _planted_card(name, meta, df, n_params(hf)))
    return read_meta(out)


def _score_matrix(model: CircuitModel, df: pd.DataFrame) -> torch.Tensor:
    s = model.structure
    scores = torch.zeros(s.n_senders, s.n_receivers, dtype=torch.float64)
    for edge, effect in zip(df.edge, df.effect):
        scores[s.edge_index(edge)] = effect
    return scores


def _planted_card(name: str, meta: dict, df, params: int) -> str:
    from circuits.zoo import planted as PL

    doc = (PL.build_planted_induction if name == "planted-induction" else PL.build_planted_ioi).__doc__
    gt_rows = df[df.in_ground_truth][["edge", "effect", "relative"]].round(4).to_dict("records")
    c = meta["check"]
    extra = ("\nThe induction head's query edge `input->a1.h0<q>` is part of the mechanism but carries the same "
             "token in the clean and the corrupted prompt at every read position (the corruption changes only the "
             "first copy), so under this task's corrupted ablation it has no effect and is not in the ground truth."
             if name == "planted-induction" else "\nQuery edges that carry only constants (`input->a1.h0<q>`, "
             "`input->a2.h0<q>`) and the BOS key of a1.h0 are identical in clean and corrupted prompts and have no "
             "effect under this ablation; they are not in the ground truth.")
    return f"""# {name}: planted circuit with a known ground truth ({params:,} parameters)

**Architecture**: `{meta['architecture']}`, {meta['n_layer']} layers x {meta['n_head']} heads, d_model {meta['d_model']}
(head dim {meta['d_model'] // meta['n_head']}), vocabulary {meta['vocab_size']}.
Weights are set by hand (`circuits.zoo.planted`), not trained: every residual dimension belongs to a named block
(token one-hot, position one-hot, one block per thing a head writes), every written vector has zero mean, and
LayerNorm's epsilon is 1e6 with weight 1e3, so LayerNorm is linear to about 1e-8.

{' '.join((doc or '').split())}
{extra}

**Task**: `task.toml` in this folder: `circuits.load_task(circuits.zoo.task_file("{name}"), model, n=64, seed=1)`.

**Ground truth** (`ground_truth.json`, MIB format, `circuits.Graph.load(path, model=model)`), {len(gt_rows)} edges,
with each edge's exact effect when cut alone (corrupted ablation, 64 prompts, seed 1):

{_table(gt_rows, ['edge', 'effect', 'relative'])}

**Check** (`circuits.zoo.planted.verify_ground_truth`): clean metric {df.attrs['full']:.4f}, everything ablated
{df.attrs['ablated']:.4f}; every ground-truth edge moves the metric by at least {c['min_gt_relative']:.1%} of that
gap (required: 5%), every one of the other {c['n_edges'] - len(gt_rows)} edges by at most
{c['max_other_abs_relative']:.2e} of it (required: 1%).

Rebuild: `circuits zoo train {name}` (construction and the exact check: about a minute on CPU).
"""


def list_rows() -> list[dict]:
    from circuits.models.loading import ZOO_DIR, zoo_models

    rows = []
    for name in zoo_models():
        meta = read_meta(ZOO_DIR / name)
        acc = meta.get("accuracy", {})
        key = meta.get("accuracy_key")
        if key and key in acc:
            shown = ", ".join(f"{k} {v:.1%}" for k, v in acc.items() if not k.endswith(("pairwise", "_gap")))
        elif "metric_full" in acc:
            shown = f"planted; ground truth {len(meta.get('ground_truth', []))} edges"
        else:
            shown = ""
        rows.append({"name": f"zoo:{name}", "architecture": meta.get("architecture", "?"),
                     "params": meta.get("params"), "mb": meta.get("weights_mb"), "accuracy": shown,
                     "description": MODELS.get(name, "")})
    return rows


def summary_json(meta: dict) -> str:
    return json.dumps({k: meta[k] for k in ("name", "params", "weights_mb", "accuracy") if k in meta}, indent=2)
