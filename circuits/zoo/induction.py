"""``attn-only-2l``: a 2-layer attention-only transformer trained on variable-period induction.

Data: the project's induction generator (``load_task("induction", ...)``) on a tokenizer of 128 random
two-letter words: ``[BOS] prefix A A`` with the period ``len(A)`` fixed per sequence. Training periods are
3-15 except 7, 10 and 13, which are held out (with 16-20, longer than any training period) for evaluation, so
accuracy there needs a mechanism that does not depend on the period: induction. The loss is the cross-entropy
of the next token in the second copy (the positions the task reads).
"""

from __future__ import annotations

import itertools
import time

import torch

from circuits.zoo.common import seed_everything, top1_accuracy

NAME = "attn-only-2l"
SEQ_LEN = 40  # evaluation length
MAX_LEN = 48  # training lengths vary from 2 * period to this
TRAIN_PERIODS = [3, 4, 5, 6, 8, 9, 11, 12, 14, 15]
HELD_OUT_PERIODS = [7, 10, 13]
LONGER_PERIODS = [16, 18, 20]
SHAPE = dict(n_layer=2, n_head=4, d_model=64, n_ctx=64)
DEFAULT_STEPS = 3000


def vocabulary(n: int = 128) -> list[str]:
    letters = "abcdefghijklmnopqrstuvwxyz"
    return ["".join(p) for p in itertools.islice(itertools.product(letters, repeat=2), n)]


def tokenizer():
    from circuits.tasks import word_level_tokenizer

    return word_level_tokenizer(vocabulary())


def build(seed: int):
    from circuits.models.attn_only import AttnOnlyConfig, AttnOnlyForCausalLM

    tok = tokenizer()
    torch.manual_seed(seed)
    cfg = AttnOnlyConfig(vocab_size=len(tok), bos_token_id=tok.bos_token_id, pad_token_id=tok.pad_token_id,
                         eos_token_id=tok.bos_token_id, **SHAPE)
    hf = AttnOnlyForCausalLM(cfg)
    with torch.no_grad():  # distinct positions from the start: previous-token heads form much sooner
        hf.wpe.weight.normal_(0.0, 0.1)
    return hf, tok


def period_task(tok, period: int, n: int, seed: int, seq_len: int = SEQ_LEN):
    from circuits.tasks import load_task

    return load_task("induction", tok, n=n, seed=seed, seq_len=seq_len, min_period=period, max_period=period)


def training_data(tok, seed: int, per_cell: int = 48):
    """Clean sequences [N, 49] (right-padded) and the mask of positions whose next token is predictable (the
    reads). Every training period comes with every length from 2 * period to 48, so the second copy starts at
    every position and no positional rule can replace induction."""
    ids, reads = [], []
    width = MAX_LEN + 1
    for P in TRAIN_PERIODS:
        for L in range(max(2 * P, 12), MAX_LEN + 1, 2):
            task = period_task(tok, P, per_cell, seed=100_000 * (seed + 1) + 100 * P + L, seq_len=L)
            pad = width - task.clean.shape[1]
            ids.append(torch.nn.functional.pad(task.clean, (0, pad), value=tok.pad_token_id))
            reads.append(torch.nn.functional.pad(task.read_mask, (0, pad), value=False))
    return torch.cat(ids), torch.cat(reads)


def train(steps: int = DEFAULT_STEPS, seed: int = 0, batch_size: int = 64, lr: float = 5e-3, progress: bool = True):
    from tqdm.auto import tqdm

    seed_everything(seed)
    hf, tok = build(seed)
    ids, reads = training_data(tok, seed)
    opt = torch.optim.AdamW(hf.parameters(), lr=lr, weight_decay=0.01, betas=(0.9, 0.98))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / 100) * max(0.05, 1 - s / max(steps, 1)))
    gen = torch.Generator().manual_seed(seed)
    hf.train()
    start = time.time()
    bar = tqdm(range(steps), desc=f"training {NAME}", disable=not progress)
    for step in bar:
        idx = torch.randint(0, len(ids), (batch_size,), generator=gen)
        x, m = ids[idx], reads[idx]
        logits = hf(x).logits[:, :-1]
        loss = torch.nn.functional.cross_entropy(logits[m[:, :-1]], x[:, 1:][m[:, :-1]])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(hf.parameters(), 1.0)
        opt.step()
        sched.step()
        if step % 50 == 0:
            bar.set_postfix(loss=f"{loss.item():.3f}")
    hf.eval()
    return hf, tok, {"steps": steps, "seed": seed, "batch_size": batch_size, "lr": lr,
                     "train_seconds": round(time.time() - start, 1), "final_loss": round(loss.item(), 4)}


def evaluate(model, n: int = 200, seed: int = 12345) -> dict:
    """Held-out accuracy: arg-max at every second-copy position equals the token after the first occurrence."""
    out = {}
    for label, periods in (("held_out_periods", HELD_OUT_PERIODS), ("longer_periods", LONGER_PERIODS),
                           ("train_periods", TRAIN_PERIODS)):
        accs = []
        for P in periods:
            task = period_task(model.tokenizer, P, n, seed=seed + P)
            with torch.no_grad():
                logits = model.hf(task.clean).logits
            accs.append(top1_accuracy(logits, task.data).mean().item())
        out[label] = round(sum(accs) / len(accs), 4)
    return out
