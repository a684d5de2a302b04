"""``Task`` (a dataset of contrastive pairs with its metric) and ``TaskBatch`` (a slice of one).

Readout representation (the same for every task, so one metric implementation serves all of them):

- ``positions`` LongTensor [n, R]: the sequence positions whose logits are read (the logits at position p
  predict token p + 1). R is the largest number of read positions of any example (1 for IOI and greater-than,
  period - 1 for induction); ``position_mask`` BoolTensor [n, R] marks the real ones (padding entries are 0).
- ``answers`` LongTensor [n, R, A] / ``answer_mask`` [n, R, A]: the answer token ids at each read position;
  A > 1 for answer sets (greater-than: the two-digit tokens above YY).
- ``distractors`` LongTensor [n, R, D] / ``distractor_mask`` [n, R, D]: the same for distractors
  (IOI: S; greater-than: the two-digit tokens at or below YY). D may be 1 with an all-False mask (no distractor).

Token ids are ``clean`` / ``corrupted`` [n, seq] with one ``attention_mask`` [n, seq] (pairs have equal length;
padding is on the right with the tokenizer's pad id, or EOS), so readout positions index both runs.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Iterator

import torch

from circuits.tasks.errors import TaskError
from circuits.tasks.metrics import Metric

_TENSOR_FIELDS = ("clean", "corrupted", "attention_mask", "positions", "position_mask", "answers",
                  "answer_mask", "distractors", "distractor_mask")


@dataclass(eq=False, frozen=True)
class TaskBatch:
    """A batch of contrastive pairs and their readout (see the module docstring for shapes)."""

    clean: torch.Tensor            # [b, seq] long
    corrupted: torch.Tensor        # [b, seq] long
    attention_mask: torch.Tensor   # [b, seq] long, 1 = real token (same for clean and corrupted)
    positions: torch.Tensor        # [b, R] long, read positions
    position_mask: torch.Tensor    # [b, R] bool
    answers: torch.Tensor          # [b, R, A] long
    answer_mask: torch.Tensor      # [b, R, A] bool
    distractors: torch.Tensor      # [b, R, D] long
    distractor_mask: torch.Tensor  # [b, R, D] bool

    def __len__(self) -> int:
        return int(self.clean.shape[0])

    def to(self, device: Any) -> "TaskBatch":
        """A copy with every tensor on ``device``."""
        return dataclasses.replace(self, **{f: getattr(self, f).to(device) for f in _TENSOR_FIELDS})

    def index(self, idx: Any) -> "TaskBatch":
        """The examples ``idx`` (slice, index tensor or list) as a new batch."""
        if isinstance(idx, list):
            idx = torch.as_tensor(idx, dtype=torch.long)
        return dataclasses.replace(self, **{f: getattr(self, f)[idx] for f in _TENSOR_FIELDS})

    @property
    def device(self) -> torch.device:
        return self.clean.device

    def readout_view(self) -> "TaskBatch":
        """The same batch for logits taken at ``positions`` only (``[b, R, V]``, e.g. from
        ``model.logits(ids, logit_positions=batch.positions)``): read position ``r`` becomes index ``r``.
        Metrics accept it like any batch; token-level fields (``read_mask``) do not apply to it."""
        R = self.positions.shape[1]
        local = torch.arange(R, device=self.positions.device).expand(len(self), R).contiguous()
        return dataclasses.replace(self, positions=local)

    @property
    def read_mask(self) -> torch.Tensor:
        """BoolTensor [b, seq]: True at read positions (a dense view of ``positions``)."""
        mask = torch.zeros_like(self.clean, dtype=torch.bool)
        return mask.scatter(1, self.positions, self.position_mask)

    @property
    def lengths(self) -> torch.Tensor:
        """LongTensor [b]: real (unpadded) length of each pair."""
        return self.attention_mask.sum(-1)

    @property
    def answer(self) -> torch.Tensor:
        """LongTensor [b]: the first answer id at the first read position (single-answer tasks)."""
        return self.answers[:, 0, 0]

    @property
    def distractor(self) -> torch.Tensor:
        """LongTensor [b]: the first distractor id at the first read position (single-distractor tasks)."""
        return self.distractors[:, 0, 0]


@dataclass(eq=False)
class Task:
    """A task: seeded contrastive pairs, their readout and metric.

    ``task.clean`` / ``task.corrupted`` [n, seq]; ``task.metric(logits)`` -> [n] for the whole task (bound);
    ``task.metric(logits, batch)`` for a batch. ``task.train`` / ``task.validation`` are the default seeded split
    (discover on one, measure faithfulness on the other); ``task.split(fraction, seed)`` makes another.
    ``records`` keeps one human-readable dict per example (``to_frame()``).
    """

    name: str
    data: TaskBatch
    base_metric: Metric
    tokenizer: Any
    records: list[dict] = field(default_factory=list)
    description: str = ""
    source: str = ""
    seed: int = 0
    prepend_bos: bool = False
    options: dict = field(default_factory=dict)
    split_fraction: float = 0.5

    def __post_init__(self) -> None:
        n = len(self.data)
        if self.records and len(self.records) != n:
            raise TaskError(f"task {self.name!r}: {len(self.records)} records for {n} examples")
        if self.data.clean.shape != self.data.corrupted.shape:
            raise TaskError(f"task {self.name!r}: clean {tuple(self.data.clean.shape)} and corrupted "
                            f"{tuple(self.data.corrupted.shape)} differ in shape")
        if self.base_metric.needs_distractor and not bool(self.data.distractor_mask.any(-1).any(-1).all()):
            raise TaskError(f"task {self.name!r}: metric {self.base_metric.name!r} needs a distractor for every "
                            f"example; fix: declare distractor(s) or use metric 'logprob' or 'kl'")
        self._split_cache: dict = {}

    # ---- data -------------------------------------------------------------------------------------------
    clean = property(lambda self: self.data.clean, doc="LongTensor [n, seq]: clean prompts.")
    corrupted = property(lambda self: self.data.corrupted, doc="LongTensor [n, seq]: corrupted prompts.")
    attention_mask = property(lambda self: self.data.attention_mask, doc="LongTensor [n, seq]: 1 = real token.")
    positions = property(lambda self: self.data.positions, doc="LongTensor [n, R]: read positions.")
    position_mask = property(lambda self: self.data.position_mask, doc="BoolTensor [n, R].")
    answers = property(lambda self: self.data.answers, doc="LongTensor [n, R, A]: answer ids.")
    answer_mask = property(lambda self: self.data.answer_mask, doc="BoolTensor [n, R, A].")
    distractors = property(lambda self: self.data.distractors, doc="LongTensor [n, R, D]: distractor ids.")
    distractor_mask = property(lambda self: self.data.distractor_mask, doc="BoolTensor [n, R, D].")
    read_mask = property(lambda self: self.data.read_mask, doc="BoolTensor [n, seq]: True at read positions.")
    answer = property(lambda self: self.data.answer, doc="LongTensor [n]: first answer id (single-answer tasks).")
    distractor = property(lambda self: self.data.distractor, doc="LongTensor [n]: first distractor id.")

    @property
    def metric(self) -> Metric:
        """The task's metric bound to the whole task: ``task.metric(logits [n, seq, V]) -> [n]``."""
        return self.base_metric.bind(self.data)

    def __len__(self) -> int:
        return len(self.data)

    def __repr__(self) -> str:
        return (f"Task({self.name!r}, n={len(self)}, seq={self.clean.shape[1]}, metric={self.base_metric.name!r}, "
                f"prepend_bos={self.prepend_bos}, source={self.source!r})")

    def as_batch(self) -> TaskBatch:
        """The whole task as one batch."""
        return self.data

    def to(self, device: Any) -> "Task":
        """A copy with tensors on ``device``."""
        return self._replace(data=self.data.to(device))

    def _replace(self, **changes: Any) -> "Task":
        fields = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        fields.update(changes)
        return Task(**fields)

    def __getitem__(self, idx: Any) -> "Task":
        """The examples ``idx`` (slice, list or LongTensor of indices) as a task of their own."""
        if isinstance(idx, int):
            idx = [idx]
        if isinstance(idx, slice):
            rows = list(range(len(self)))[idx]
        else:
            idx = torch.as_tensor(idx)
            if idx.dtype == torch.bool:  # a boolean mask over examples
                idx = idx.nonzero().reshape(-1)
            rows = [int(i) for i in idx.to(torch.long).reshape(-1).tolist()]
        records = [self.records[i] for i in rows] if self.records else []
        return self._replace(data=self.data.index(torch.as_tensor(rows, dtype=torch.long)), records=records)

    def aligned(self, length: int | None = None) -> "Task":
        """The pairs of one token length (default: the most common one, the longest among ties), so that position
        p is the same slot of every prompt: what position-aware circuits need (``CircuitSession.n_positions``).
        The padding past that length is dropped."""
        lengths = self.data.lengths
        values, counts = lengths.unique(return_counts=True)
        if length is None:
            best = counts.max()
            length = int(values[counts == best].max())
        keep = (lengths == int(length)).nonzero().reshape(-1)
        if len(keep) == 0:
            found = ", ".join(str(int(v)) for v in values)
            raise TaskError(f"task {self.name!r} has no pair of {length} tokens (its lengths: {found}); fix: "
                            "give one of those lengths, or None for the most common")
        task = self[keep]
        trimmed = dataclasses.replace(task.data, clean=task.data.clean[:, :length],
                                      corrupted=task.data.corrupted[:, :length],
                                      attention_mask=task.data.attention_mask[:, :length])
        return task._replace(data=trimmed, options={**task.options, "aligned_length": int(length)})

    def with_metric(self, name: str) -> "Task":
        """The same pairs scored with another metric (e.g. ``"kl"`` for faithfulness to the full model)."""
        return self._replace(base_metric=Metric(name))

    # ---- splits and batches -------------------------------------------------------------------------------
    def split(self, fraction: float | None = None, seed: int | None = None) -> tuple["Task", "Task"]:
        """Seeded (train, validation) split: ``fraction`` of the examples (rounded) go to train.

        Discovery should run on train and faithfulness be measured on validation. Deterministic for a seed
        (default: the task's seed).
        """
        fraction = self.split_fraction if fraction is None else float(fraction)
        if not 0.0 < fraction < 1.0:
            raise TaskError(f"split fraction must be in (0, 1), got {fraction}")
        seed = self.seed if seed is None else int(seed)
        key = (fraction, seed)
        if key not in self._split_cache:
            g = torch.Generator().manual_seed(seed + 7919)
            perm = torch.randperm(len(self), generator=g)
            n_train = min(max(int(round(fraction * len(self))), 1), len(self) - 1) if len(self) > 1 else len(self)
            train_idx, val_idx = perm[:n_train].sort().values, perm[n_train:].sort().values
            self._split_cache[key] = (self._named(self[train_idx], "train"), self._named(self[val_idx], "validation"))
        return self._split_cache[key]

    def _named(self, task: "Task", part: str) -> "Task":
        task.options = {**task.options, "split": part}
        return task

    @property
    def train(self) -> "Task":
        """The default split's training part (``split_fraction`` of the examples)."""
        return self.split()[0]

    @property
    def validation(self) -> "Task":
        """The default split's validation part."""
        return self.split()[1]

    def batches(self, batch_size: int, *, shuffle: bool = False, seed: int | None = None,
                device: Any = None) -> Iterator[TaskBatch]:
        """Yield ``TaskBatch`` objects of ``batch_size`` examples (the last may be smaller)."""
        if batch_size <= 0:
            raise TaskError(f"batch_size must be positive, got {batch_size}")
        order = torch.arange(len(self))
        if shuffle:
            g = torch.Generator().manual_seed(self.seed if seed is None else int(seed))
            order = torch.randperm(len(self), generator=g)
        for start in range(0, len(self), batch_size):
            batch = self.data.index(order[start:start + batch_size])
            yield batch.to(device) if device is not None else batch

    # ---- inspection --------------------------------------------------------------------------------------
    def to_frame(self):
        """A pandas DataFrame, one row per pair: clean / corrupted prompts, answer, distractor, read positions,
        plus task-specific columns (template, slot values, period...)."""
        import pandas as pd

        rows = []
        positions = self.positions.tolist()
        pmask = self.position_mask.tolist()
        for i in range(len(self)):
            row = dict(self.records[i]) if self.records else {}
            row.setdefault("clean", self.tokenizer.decode(self.clean[i][self.attention_mask[i].bool()]))
            row.setdefault("corrupted", self.tokenizer.decode(self.corrupted[i][self.attention_mask[i].bool()]))
            row["positions"] = [p for p, m in zip(positions[i], pmask[i]) if m]
            rows.append(row)
        front = ["clean", "corrupted", "answer", "distractor", "positions"]
        frame = pd.DataFrame(rows)
        return frame[[c for c in front if c in frame] + [c for c in frame if c not in front]]


Readout = tuple[int, list[int], list[int]]  # (position, answer ids, distractor ids)


def build_batch(clean: list[list[int]], corrupted: list[list[int]], readouts: list[list[Readout]],
                pad: int) -> TaskBatch:
    """Pad Python lists into a ``TaskBatch``.

    ``readouts[i]`` lists (position, answer ids, distractor ids) for example i; sequences are right-padded.
    """
    n = len(clean)
    seq = max((len(c) for c in clean), default=0)
    r = max((len(x) for x in readouts), default=1) or 1
    a = max((len(ans) for x in readouts for _, ans, _ in x), default=1) or 1
    d = max((len(dis) for x in readouts for _, _, dis in x), default=1) or 1
    clean_t = torch.full((n, seq), pad, dtype=torch.long)
    corr_t = torch.full((n, seq), pad, dtype=torch.long)
    attn = torch.zeros((n, seq), dtype=torch.long)
    pos = torch.zeros((n, r), dtype=torch.long)
    pos_m = torch.zeros((n, r), dtype=torch.bool)
    ans = torch.zeros((n, r, a), dtype=torch.long)
    ans_m = torch.zeros((n, r, a), dtype=torch.bool)
    dis = torch.zeros((n, r, d), dtype=torch.long)
    dis_m = torch.zeros((n, r, d), dtype=torch.bool)
    for i in range(n):
        if len(clean[i]) != len(corrupted[i]):
            raise TaskError(f"example {i}: clean has {len(clean[i])} tokens, corrupted {len(corrupted[i])}")
        L = len(clean[i])
        clean_t[i, :L] = torch.as_tensor(clean[i], dtype=torch.long)
        corr_t[i, :L] = torch.as_tensor(corrupted[i], dtype=torch.long)
        attn[i, :L] = 1
        for j, (p, aa, dd) in enumerate(readouts[i]):
            if not 0 <= p < L:
                raise TaskError(f"example {i}: read position {p} outside the sequence of {L} tokens")
            pos[i, j], pos_m[i, j] = p, True
            if aa:
                ans[i, j, :len(aa)] = torch.as_tensor(aa, dtype=torch.long)
                ans_m[i, j, :len(aa)] = True
            if dd:
                dis[i, j, :len(dd)] = torch.as_tensor(dd, dtype=torch.long)
                dis_m[i, j, :len(dd)] = True
    return TaskBatch(clean_t, corr_t, attn, pos, pos_m, ans, ans_m, dis, dis_m)
