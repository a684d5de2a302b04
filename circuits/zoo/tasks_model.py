"""``gpt2-tasks``: a 4-layer GPT-2 trained on a mixture of IOI, greater-than and induction.

One model, three circuits, in the word-level vocabulary of the built-in tasks
(``word_level_tokenizer(task_vocabulary())``). Data come from the project's own generators with a held-out
split made here (the task package has no hold-out option): a fifth of the (template, IO name) combinations of
IOI and of the (noun, YY) combinations of greater-than never appear in training and are the evaluation set;
induction is evaluated on fresh random sequences (another seed). The loss is the cross-entropy of the answer
set at each read position (``-logprob`` metric): IO for IOI, the years above YY for greater-than, the next token
in the second copy for induction.
"""

from __future__ import annotations

import time

import torch

from circuits.tasks import load_task
from circuits.zoo.common import held_out, seed_everything, top1_accuracy

NAME = "gpt2-tasks"
SHAPE = dict(n_layer=4, n_head=4, n_embd=128, n_positions=64)
DEFAULT_STEPS = 4000
TASKS = ("ioi", "greater-than", "induction")


def combo(task_name: str, record: dict) -> tuple:
    if task_name == "ioi":
        return ("ioi", record["template"], record["IO"])
    if task_name == "greater-than":
        return ("greater-than", record["NOUN"], record["YY"])
    raise ValueError(task_name)


def split_task(task, want_held_out: bool):
    """The examples of ``task`` whose combination is (or is not) held out, as a TaskBatch."""
    keep = [i for i, r in enumerate(task.records) if held_out(*combo(task.name, r)) == want_held_out]
    return task.data.index(keep)


def tokenizer():
    from circuits.tasks import task_vocabulary, word_level_tokenizer

    return word_level_tokenizer(task_vocabulary())


def build(seed: int):
    from transformers import GPT2Config, GPT2LMHeadModel

    tok = tokenizer()
    cfg = GPT2Config(vocab_size=len(tok), resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
                     bos_token_id=tok.bos_token_id, eos_token_id=tok.bos_token_id, pad_token_id=tok.pad_token_id,
                     tie_word_embeddings=False, **SHAPE)
    torch.manual_seed(seed)
    return GPT2LMHeadModel(cfg), tok


def load(name: str, tok, n: int, seed: int):
    return load_task(name, tok, n=n, seed=seed)


def training_data(tok, seed: int, n: int = 12000) -> dict:
    data = {}
    for k, name in enumerate(TASKS):
        task = load(name, tok, n if name != "induction" else n // 2, seed=1000 * (seed + 1) + k)
        data[name] = task.data if name == "induction" else split_task(task, want_held_out=False)
    return data


def train(steps: int = DEFAULT_STEPS, seed: int = 0, batch_size: int = 32, lr: float = 2e-3, progress: bool = True,
          n_data: int = 12000):
    from tqdm.auto import tqdm

    from circuits.zoo.common import readout_loss

    seed_everything(seed)
    hf, tok = build(seed)
    data = training_data(tok, seed, n_data)
    opt = torch.optim.AdamW(hf.parameters(), lr=lr, weight_decay=0.01, betas=(0.9, 0.98))
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / 200) * max(0.05, 1 - s / max(steps, 1)))
    gen = torch.Generator().manual_seed(seed)
    hf.train()
    start = time.time()
    bar = tqdm(range(steps), desc=f"training {NAME}", disable=not progress)
    for step in bar:
        losses = {}
        for name, batch_all in data.items():
            b = batch_all.index(torch.randint(0, len(batch_all), (batch_size,), generator=gen))
            logits = hf(b.clean, attention_mask=b.attention_mask).logits
            losses[name] = readout_loss(logits, b)
        loss = sum(losses.values())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(hf.parameters(), 1.0)
        opt.step()
        sched.step()
        if step % 50 == 0:
            bar.set_postfix({k[:5]: f"{v.item():.3f}" for k, v in losses.items()})
    hf.eval()
    return hf, tok, {"steps": steps, "seed": seed, "batch_size_per_task": batch_size, "lr": lr,
                     "train_seconds": round(time.time() - start, 1),
                     "final_loss": {k: round(v.item(), 4) for k, v in losses.items()}}


def evaluate(model, n: int = 600, seed: int = 12345) -> dict:
    """Held-out top-1 accuracy per task (IOI: arg-max is IO; greater-than: arg-max is a year above YY;
    induction: arg-max is the next token at every second-copy position), plus the pairwise accuracy
    (IOI: logit(IO) > logit(S); greater-than: p(> YY) > p(<= YY))."""
    out = {}
    for k, name in enumerate(TASKS):
        task = load(name, model.tokenizer, n, seed=seed + k)
        batch = task.data if name == "induction" else split_task(task, want_held_out=True)
        with torch.no_grad():
            logits = model.hf(batch.clean, attention_mask=batch.attention_mask).logits
        out[name] = round(top1_accuracy(logits, batch).mean().item(), 4)
        if name != "induction":
            out[f"{name}_pairwise"] = round((task.metric(logits, batch) > 0).float().mean().item(), 4)
    return out
