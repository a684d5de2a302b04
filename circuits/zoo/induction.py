"""``attn-only-2l``: a 2-layer attention-only transformer trained on variable-period induction.

Data: the project's induction generator (``load_task("induction", ...)``) on a tokenizer of 64 random
two-letter words: ``[BOS] prefix A A`` with the period ``len(A)`` fixed per sequence. Training periods are
2-15 except 7, 10 and 13, which are held out (with 16-20, longer than any training period) for evaluation, so
accuracy there needs a mechanism that does not depend on the period: induction. The loss is the cross-entropy
of the next token in the second copy (the positions the task reads).
"""

from __future__ import annotations

import itertools
import time
from typing import TYPE_CHECKING, Any

import torch

from circuits.zoo.common import seed_everything, top1_accuracy

if TYPE_CHECKING:  # pragma: no cover
    from circuits.models.circuit_model import CircuitModel
    from circuits.tasks import Task

NAME = "attn-only-2l"
SEQ_LEN = 40  # evaluation length
MAX_LEN = 40  # training lengths vary from 2 * period to this
VOCAB = 64  # random words; a small vocabulary makes induction heads form much sooner
TRAIN_PERIODS = [2, 3, 4, 5, 6, 8, 9, 11, 12, 14, 15]  # period 2: only the previous token locates the answer
HELD_OUT_PERIODS = [7, 10, 13]
LONGER_PERIODS = [16, 18, 20]
# 3 heads per layer, head dim 64 each
SHAPE: dict[str, Any] = dict(n_layer=2, n_head=3, d_model=64, head_dim=64, n_ctx=64)
POS_BASE = 10.0  # sinusoidal base: short wavelengths make "exactly one position back" cheap to read
HEAD_PENALTY = 0.1  # weight of sum over heads of sqrt(||W_O of the head||): favours one head per role
PENALTY_FROM = 0.4  # ... from this fraction of the run on (after the induction mechanism has formed)
DEFAULT_STEPS = 2500
LR = 3e-3
BATCH = 128
WEIGHT_DECAY = 0.0
EVAL_EVERY = 500  # print held-out accuracy every so many steps (0: never)


def vocabulary(n: int | None = None) -> list[str]:
    n = VOCAB if n is None else n
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
    with torch.no_grad():
        # Fixed sinusoidal positions (frozen in training): "attend to the previous position" is then one linear
        # map for every position, so the previous-token head forms early and generalizes, and a lookup table over
        # (query, key) positions (a period-specific shortcut) is not available. Tokens start at the same scale.
        hf.wpe.weight.copy_(sinusoidal_positions(cfg.n_ctx, cfg.d_model, base=POS_BASE))
        hf.wte.weight.normal_(0.0, 1.0)
    hf.wpe.weight.requires_grad_(False)
    return hf, tok


def sinusoidal_positions(n: int, d: int, base: float = 100.0) -> torch.Tensor:
    pos = torch.arange(n, dtype=torch.float32)[:, None]
    freq = base ** (-torch.arange(0, d, 2, dtype=torch.float32) / d)
    out = torch.zeros(n, d)
    out[:, 0::2] = torch.sin(pos * freq)
    out[:, 1::2] = torch.cos(pos * freq)
    return out


def period_task(tok, period: int, n: int, seed: int, seq_len: int = SEQ_LEN) -> Task:
    from circuits.tasks import load_task

    return load_task("induction", tok, n=n, seed=seed, seq_len=seq_len, min_period=period, max_period=period)


def training_data(tok, seed: int, per_cell: int = 100, short_boost: int = 4, short_prefix: int = 6):
    """Clean sequences [N, 49] (right-padded) and the mask of positions whose next token is predictable (the
    reads). Every training period comes with every length from 2 * period to 48, so the second copy starts at
    every position and no positional rule can replace induction. Sequences with a short prefix (at most
    ``short_prefix`` tokens before the first copy: the repeated segment is most of the sequence, so most positions
    carry an induction target) are ``short_boost`` times as frequent, which shortens the pre-induction plateau."""
    ids, reads = [], []
    width = MAX_LEN + 1
    for P in TRAIN_PERIODS:
        for L in range(2 * P, MAX_LEN + 1, 2):
            count = per_cell * (short_boost if L - 2 * P <= short_prefix else 1)
            task = period_task(tok, P, count, seed=100_000 * (seed + 1) + 100 * P + L, seq_len=L)
            pad = width - task.clean.shape[1]
            ids.append(torch.nn.functional.pad(task.clean, (0, pad), value=tok.pad_token_id))
            reads.append(torch.nn.functional.pad(task.read_mask, (0, pad), value=False))
    return torch.cat(ids), torch.cat(reads)


def lr_factor(step: int, steps: int, warmup: int = 100, hold: float = 0.6) -> float:
    """Linear warm-up, constant until ``hold`` of the run (the plateau escape is sudden and needs a high rate),
    then linear decay to 10%."""
    decay = max(0.0, (step - hold * steps) / max((1 - hold) * steps, 1))
    return min(1.0, (step + 1) / warmup) * (1.0 - 0.9 * min(decay, 1.0))


def head_penalty(hf) -> torch.Tensor:
    """Sum over heads of the square root of the Frobenius norm of the head's output weights. Concave in each
    head's scale, so a role shared by several heads costs more than the same role done by one: without it the
    three layer-1 heads learn the same induction pattern and no single one matters."""
    total: torch.Tensor | float = 0.0
    for block in hf.blocks:
        a = block.attn
        w = a.o_proj.weight.view(a.o_proj.weight.shape[0], a.n_head, a.head_dim)
        total = total + (w.pow(2).sum((0, 2)) + 1e-8).pow(0.25).sum()
    return torch.as_tensor(total)


def train(steps: int = DEFAULT_STEPS, seed: int = 0, batch_size: int | None = None, lr: float | None = None,
          progress: bool = True, eval_every: int | None = None):
    from tqdm.auto import tqdm

    batch_size = BATCH if batch_size is None else batch_size
    lr = LR if lr is None else lr
    eval_every = EVAL_EVERY if eval_every is None else eval_every
    seed_everything(seed)
    hf, tok = build(seed)
    ids, reads = training_data(tok, seed)
    opt = torch.optim.AdamW([p for p in hf.parameters() if p.requires_grad], lr=lr, weight_decay=WEIGHT_DECAY,
                            betas=(0.9, 0.98))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_factor(s, steps))
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
        total = loss + HEAD_PENALTY * head_penalty(hf) if step >= PENALTY_FROM * steps else loss
        total.backward()
        torch.nn.utils.clip_grad_norm_(hf.parameters(), 1.0)
        opt.step()
        sched.step()
        if step % 50 == 0:
            bar.set_postfix(loss=f"{loss.item():.3f}")
        if eval_every and (step + 1) % eval_every == 0:
            print(f"step {step + 1} loss {loss.item():.3f} {time.time() - start:.0f}s "
                  f"held-out {_quick_eval(hf, tok):.3f}", flush=True)
            hf.train()
    hf.eval()
    return hf, tok, {"steps": steps, "seed": seed, "batch_size": batch_size, "lr": lr,
                     "train_seconds": round(time.time() - start, 1), "final_loss": round(loss.item(), 4)}


@torch.no_grad()
def _quick_eval(hf, tok, n: int = 60) -> float:
    hf.eval()
    accs = []
    for P in HELD_OUT_PERIODS:
        task = period_task(tok, P, n, seed=999 + P)
        accs.append(top1_accuracy(hf(task.clean).logits, task.data).mean().item())
    return sum(accs) / len(accs)


def evaluate(model: CircuitModel, n: int = 200, seed: int = 12345) -> dict:
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
