"""SFT batches in the train step's layout (ipo_jax/train/step.py ROW_KEYS + pair_valid), so the
one jitted IPO step trains them under the `sft` loss preset: an example is a "pair" with only a
chosen side, whose loss slots are its assistant tokens.

Rows: without packing one example per row; with packing several examples per row of
max(buckets) tokens (best-fit decreasing once per run, ties broken by the seed:
`ipo_jax.data.pairs.best_fit_decreasing`), each its own segment (segment ids 1, 2, ... in the row,
positions from 0), so attention never crosses examples and each example's log-probs equal its
unpacked row's. Slot s of a row predicts token s + 1 from token s; it counts when token s + 1 is
an assistant token of the same example (the last token of a segment predicts nothing).

Batches: epoch e visits the rows in an order seeded by (seed, e); batch b of epoch e is a fixed
set of `rows_per_micro * micro_batches` rows, padded to the bucket of its longest row, so
(epoch, batch) is a complete data position and a resumed run sees exactly the same batches. A
micro-batch has a fixed number of example slots (the most examples any `rows_per_micro` rows
hold), so every step has one shape per bucket.
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import numpy as np

from ipo_jax.buckets import bucket_length
from ipo_jax.data.pairs import best_fit_decreasing
from ipo_jax.sft.tokens import SftExample
from ipo_jax.train.step import ROW_KEYS

_PACK_STREAM = 0x53465450  # 'SFTP': tie-breaking of the row packing, apart from the epoch orders
_BOOL_KEYS = ("slot_chosen", "slot_rejected")


def empty_batch(rows: int, length: int, slots: int) -> dict[str, np.ndarray]:
    out = {k: np.zeros((rows, length), bool if k in _BOOL_KEYS else np.int32) for k in ROW_KEYS}
    out["pair_valid"] = np.zeros((slots,), bool)
    return out


def place_example(out: dict, row: int, offset: int, example: SftExample, slot: int, segment: int) -> int:
    """Write `example` as segment `segment` of `row` from column `offset`; returns its length."""
    n = len(example)
    cols, slots = slice(offset, offset + n), slice(offset, offset + n - 1)
    out["tokens"][row, cols] = example.tokens
    out["positions"][row, cols] = np.arange(n)
    out["segment_ids"][row, cols] = segment
    out["slot_source"][row, slots] = offset + np.arange(n - 1)
    out["slot_target"][row, slots] = example.tokens[1:]
    out["slot_pair"][row, slots] = slot
    out["slot_chosen"][row, slots] = example.loss[1:]
    out["pair_valid"][slot] = True
    return n


def pack_examples(rows: Sequence[Sequence[SftExample]], *, length: int, num_rows: int, slots: int) -> dict[str, np.ndarray]:
    """One micro-batch: row i holds the examples rows[i] one after another; examples take slots
    0, 1, ... in row order; rows past len(rows) and slots past the examples are padding."""
    if len(rows) > num_rows:
        raise ValueError(f"{len(rows)} rows do not fit a micro-batch of {num_rows}")
    out = empty_batch(num_rows, length, slots)
    slot = 0
    for r, members in enumerate(rows):
        if sum(len(e) for e in members) > length:
            raise ValueError(f"examples {[e.id for e in members]} do not fit in length {length}")
        if slot + len(members) > slots:
            raise ValueError(f"{slot + len(members)} examples do not fit {slots} example slots")
        offset = 0
        for segment, example in enumerate(members, 1):
            offset += place_example(out, r, offset, example, slot, segment)
            slot += 1
    return out


@dataclasses.dataclass
class SftBatches:
    """Deterministic, resumable batches over tokenised examples (module doc)."""

    examples: list[SftExample]
    rows_per_micro: int
    micro_batches: int
    buckets: Sequence[int]
    seed: int = 0
    shuffle: bool = True
    packing: bool = True

    def __post_init__(self):
        if self.packing:
            lengths = [len(e) for e in self.examples]
            tie_break = np.random.default_rng([self.seed, _PACK_STREAM]).permutation(len(lengths))
            bins = best_fit_decreasing(lengths, max(self.buckets), tie_break)
        else:
            bins = [[i] for i in range(len(self.examples))]
        self.rows = [np.asarray(b, np.int64) for b in bins]
        sizes = sorted((len(b) for b in bins), reverse=True)
        self.slots = max(1, sum(sizes[: self.rows_per_micro]))  # example slots per micro-batch

    @property
    def rows_per_batch(self) -> int:
        return self.rows_per_micro * self.micro_batches

    @property
    def units(self) -> int:
        """Rows an epoch deals out (examples, or packed rows)."""
        return len(self.rows)

    @property
    def batches_per_epoch(self) -> int:
        return -(-self.units // self.rows_per_batch)

    def _permutation(self, epoch: int) -> np.ndarray:
        if not self.shuffle:
            return np.arange(self.units)
        return np.random.default_rng([self.seed, epoch]).permutation(self.units)

    def batch(self, epoch: int, index: int) -> tuple[dict[str, np.ndarray], np.ndarray]:
        """Arrays [micro_batches, ...] of batch `index` of `epoch`, and the example index in each
        example slot (-1: padding), [micro_batches * slots]."""
        R = self.rows_per_micro
        visit = self._permutation(epoch)[index * self.rows_per_batch : (index + 1) * self.rows_per_batch]
        rows = [self.rows[r] for r in visit]
        longest = max(sum(len(self.examples[i]) for i in row) for row in rows)
        length = bucket_length(longest, self.buckets)
        micro, idx = [], np.full(self.micro_batches * self.slots, -1, np.int64)
        for m in range(self.micro_batches):
            mine = rows[m * R : (m + 1) * R]
            micro.append(pack_examples([[self.examples[i] for i in row] for row in mine], length=length, num_rows=R,
                                       slots=self.slots))
            flat = np.concatenate(mine) if mine else np.zeros(0, np.int64)
            idx[m * self.slots : m * self.slots + len(flat)] = flat
        return {k: np.stack([mb[k] for mb in micro]) for k in micro[0]}, idx

    def padding_share(self, epoch: int = 0) -> float:
        """Share of the token positions of `epoch`'s batches that are padding (from the lengths)."""
        used = np.array([sum(len(self.examples[i]) for i in row) for row in self.rows])[self._permutation(epoch)]
        total = sum(self.rows_per_batch * bucket_length(int(used[b * self.rows_per_batch : (b + 1) * self.rows_per_batch].max()),
                                                        self.buckets) for b in range(self.batches_per_epoch))
        return 1 - float(used.sum()) / total if total else 0.0

    def describe(self) -> str:
        """One line for the run's log."""
        text = (f"epoch: {len(self.examples)} examples in {self.units} rows, {self.batches_per_epoch} batches of "
                f"{self.rows_per_micro} rows x {self.micro_batches} micro-batches")
        if self.packing:
            text += f"; packing into rows of {max(self.buckets)} tokens, {self.slots} example slots per micro-batch"
        return text + f", {self.padding_share():.1%} padding"
