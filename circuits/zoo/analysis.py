"""Head scores and single-head ablations of the induction model (``attn-only-2l``).

* previous-token score: mean attention from each position to the one before it (position >= 1, real tokens);
* induction score: mean attention from a token of the second copy to the token after its first occurrence;
* single-head ablation: the head's output (all its out-edges) replaced by its mean output over a reference set
  of sequences (per position), everything else intact; reported as held-out accuracy and metric (log p).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from circuits.zoo.common import top1_accuracy

if TYPE_CHECKING:  # pragma: no cover
    from circuits.models.circuit_model import CircuitModel
    from circuits.tasks import Task

DESTROYED = 0.5  # a head "matters" when ablating it alone leaves less than half of the clean accuracy


@torch.no_grad()
def head_scores(model: CircuitModel, task: Task) -> list[dict]:
    hf = model.hf
    out = hf(task.clean, attention_mask=task.attention_mask, output_attentions=True)
    rows = []
    for layer, pattern in enumerate(out.attentions):  # [B, H, P, P]
        B, H, P, _ = pattern.shape
        idx = torch.arange(1, P)
        prev_all = pattern[:, :, idx, idx - 1]  # [B, H, P-1]
        real = task.attention_mask[:, 1:].bool()[:, None, :].expand_as(prev_all)
        prev = (prev_all * real).sum((0, 2)) / real.sum((0, 2))
        ind_sum, ind_n = torch.zeros(H), 0
        for b, rec in enumerate(task.records):
            s0, period = rec["first_copy_start"], rec["period"]
            q = torch.arange(s0 + period, s0 + 2 * period - 1)
            k = torch.arange(s0 + 1, s0 + period)
            ind_sum += pattern[b, :, q, k].sum(-1)
            ind_n += len(q)
        ind = ind_sum / max(ind_n, 1)
        for h in range(H):
            rows.append({"head": f"a{layer}.h{h}", "layer": layer, "prev_token_score": round(prev[h].item(), 4),
                         "induction_score": round(ind[h].item(), 4)})
    return rows


@torch.no_grad()
def head_ablations(model: CircuitModel, task: Task, reference: Task) -> list[dict]:
    """Mean-ablate each head alone; accuracy and metric on ``task`` (reference: another seeded sample)."""
    from circuits.interventions.ablation import ablated_outputs

    s = model.structure
    ids, am = task.clean, task.attention_mask
    ablated = ablated_outputs(model, "mean", ids, am, reference_ids=reference.clean,
                              reference_mask=reference.attention_mask)
    base = s.edge_mask.to(model.dtype)
    heads = [(layer, h) for layer in range(s.n_layers) for h in range(s.n_heads)]
    masks = base.expand(len(heads) + 1, *base.shape).clone()
    for c, (layer, h) in enumerate(heads, start=1):
        masks[c, s.head_sender(layer, h)] = 0.0
    logits = model.patched_logits(ids, masks, ablated, am)  # [C, B, P, V]
    clean_acc = top1_accuracy(logits[0], task.data).mean().item()
    clean_metric = task.metric(logits[0]).mean().item()
    rows = []
    for c, (layer, h) in enumerate(heads, start=1):
        acc = top1_accuracy(logits[c], task.data).mean().item()
        rows.append({"head": f"a{layer}.h{h}", "accuracy": round(acc, 4),
                     "accuracy_drop": round(clean_acc - acc, 4),
                     "metric_drop": round(clean_metric - task.metric(logits[c]).mean().item(), 4),
                     "destroyed": acc < DESTROYED * clean_acc})
    return [{"head": "none", "accuracy": round(clean_acc, 4), "accuracy_drop": 0.0, "metric_drop": 0.0,
             "destroyed": False}] + rows


def induction_report(model: CircuitModel, n: int = 200, seed: int = 777) -> dict:
    """Scores and ablations on held-out periods (7, 10, 13 at length 40)."""
    from circuits.zoo.induction import HELD_OUT_PERIODS, period_task

    tok = model.tokenizer
    scores, ablations = [], []
    per = max(n // len(HELD_OUT_PERIODS), 1)
    tasks = [period_task(tok, P, per, seed=seed + P) for P in HELD_OUT_PERIODS]
    refs = [period_task(tok, P, per, seed=seed + 1000 + P) for P in HELD_OUT_PERIODS]
    all_scores = [head_scores(model, t) for t in tasks]
    all_abl = [head_ablations(model, t, r) for t, r in zip(tasks, refs)]
    for i, row in enumerate(all_scores[0]):
        scores.append({**row, **{k: round(sum(s[i][k] for s in all_scores) / len(all_scores), 4)
                                 for k in ("prev_token_score", "induction_score")}})
    for i, row in enumerate(all_abl[0]):
        acc = sum(a[i]["accuracy"] for a in all_abl) / len(all_abl)
        ablations.append({"head": row["head"], "accuracy": round(acc, 4),
                          "accuracy_drop": round(sum(a[i]["accuracy_drop"] for a in all_abl) / len(all_abl), 4),
                          "metric_drop": round(sum(a[i]["metric_drop"] for a in all_abl) / len(all_abl), 4)})
    clean = ablations[0]["accuracy"]
    for row in ablations:
        row["destroyed"] = bool(row["accuracy"] < DESTROYED * clean)
    layer0 = [r for r in scores if r["layer"] == 0]
    layer1 = [r for r in scores if r["layer"] == 1]
    best_prev = max(layer0, key=lambda r: r["prev_token_score"])["head"]
    best_ind = max(layer1, key=lambda r: r["induction_score"])["head"]
    return {"scores": scores, "ablations": ablations, "best_prev_token_head": best_prev,
            "best_induction_head": best_ind,
            "destroying_heads": [r["head"] for r in ablations if r["destroyed"]]}
