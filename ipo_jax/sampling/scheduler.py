"""The host side of decoding: which prompt each row of the decode batch serves (`Row`), how a
row ends and what it becomes (`Ending`), and the loops that drive the device programs --
static batches (every row decodes until the batch is done) and continuous batching (a row
whose generation ended takes the next prompt at the next chunk boundary).

Decoding runs whole chunks of `chunk_tokens` steps on the device; between chunks the host
appends each row's drawn ids within its token budget and checks its stop strings, and rows
ended on the host are marked done on the device too.
"""

from __future__ import annotations

import collections
import dataclasses
from typing import Callable, Sequence

import numpy as np

from ipo_jax.buckets import batch_bucket, bucket_length
from ipo_jax.sampling.programs import DecodeState, DrawSettings, Programs, PromptRows
from ipo_jax.sampling.types import Generation


@dataclasses.dataclass(eq=False)  # a slot is itself, not its contents
class Row:
    """One row (slot) of the decode batch: the job (prompt index) it serves, None when free;
    the ids it drew; why it ended (None while drawing; 'eos', 'stop' or 'length'); the draws
    its budget still allows."""

    job: int | None = None
    ids: list[int] = dataclasses.field(default_factory=list)
    finish: str | None = None
    left: int = 0

    @property
    def drawing(self) -> bool:
        return self.job is not None and self.finish is None


@dataclasses.dataclass(frozen=True)
class Ending:
    """How a row ends -- an end id, a stop string (needs `decode`), or `max_new_tokens` -- and
    the `Generation` it becomes."""

    eos_ids: frozenset[int]
    max_new_tokens: int
    stop_strings: tuple[str, ...] = ()
    decode: Callable[[list[int]], str] | None = None

    def start(self, row: Row, job: int, first: int, device_done: bool) -> None:
        """`row` takes `job`, whose first drawn id is `first` (`device_done`: it was an end id)."""
        row.job, row.ids, row.left = job, [int(first)], self.max_new_tokens - 1
        row.finish = "eos" if device_done else (None if row.left > 0 else "length")

    def extend(self, row: Row, drawn: np.ndarray, device_done: bool) -> None:
        """Append a drawing row's ids of one chunk (-1 = none), those within its budget only (the
        chunk runs whole, so an end id past the budget does not count); note why it ended."""
        steps = min(len(drawn), row.left)
        row.left -= steps
        new = [int(t) for t in drawn[:steps] if t >= 0]
        row.ids.extend(new)
        if device_done and self.eos_ids.intersection(new):
            row.finish = "eos"
        elif self.stop_strings and any(s in self.decode(row.ids) for s in self.stop_strings):
            row.finish = "stop"
        elif row.left == 0:
            row.finish = "length"

    def generation(self, row: Row) -> Generation:
        """A row's Generation from the ids it drew and why it ended (None: the token limit)."""
        ids = row.ids[: self.max_new_tokens]
        reason, end_id = row.finish or "length", None
        if reason == "eos":
            cut = next(j for j, t in enumerate(ids) if t in self.eos_ids)
            ids, end_id, reason = ids[:cut], ids[cut], "stop"
        elif reason == "stop":  # keep tokens up to the one that completes the first stop string
            ids = ids[: next(k for k in range(1, len(ids) + 1)
                             if any(s in self.decode(ids[:k]) for s in self.stop_strings))]
        text = self.decode(ids) if self.decode else None
        return Generation(ids, reason, text, end_id)


def left_padded(prompts: Sequence[Sequence[int]], seeds: Sequence[int], rows: int, length: int,
                pad_id: int) -> PromptRows:
    """`prompts` as a `rows`-row batch of host arrays, each left-padded to `length`; padding rows
    repeat the first prompt (seed 0) and are dead (live False)."""
    tokens = np.full((rows, length), pad_id, np.int32)
    segment_ids = np.zeros((rows, length), np.int32)
    for i in range(rows):
        ids = np.asarray(prompts[i if i < len(prompts) else 0], np.int32)
        tokens[i, length - len(ids) :] = ids
        segment_ids[i, length - len(ids) :] = 1
    positions = np.maximum(np.cumsum(segment_ids, axis=1) - 1, 0).astype(np.int32)
    seeds = np.asarray(list(seeds) + [0] * (rows - len(prompts)), np.int32)
    return PromptRows(tokens, positions, segment_ids, seeds, np.arange(rows) < len(prompts))


class Scheduler:
    """Runs prompts through `programs` in batches of `batch_size` rows: prompts padded to their
    bucket (`buckets`), `chunk_tokens` decode steps per device call; a refill batch is a power
    of two that `row_devices` (the mesh's row devices) divides."""

    def __init__(self, programs: Programs, batch_size: int, chunk_tokens: int, buckets: Sequence[int],
                 pad_id: int, row_devices: int = 1):
        self.programs, self.batch_size, self.chunk_tokens = programs, batch_size, chunk_tokens
        self.buckets, self.pad_id, self.row_devices = list(buckets), pad_id, row_devices

    def decode_slots(self, max_new_tokens: int) -> int:
        """Cache slots for decoding: every decode call runs whole chunks (the first writes the
        prefill's token), so the rounded-up number of steps, plus one."""
        return 1 + -(-(max_new_tokens - 1) // self.chunk_tokens) * self.chunk_tokens

    def refill_size(self, count: int) -> int:
        """The batch a refill of `count` prompts is prefilled in (`batch_bucket`)."""
        return batch_bucket(count, self.batch_size, self.row_devices)

    def prefill(self, prompts, seeds, jobs: list[int], rows: int, settings: DrawSettings, max_len: int | None = None,
                extra_slots: int = 0) -> DecodeState:
        """Prefill prompts[jobs] as a `rows`-row batch into a cache of `max_len` slots (default:
        their bucket plus `extra_slots`)."""
        length = bucket_length(max(len(prompts[j]) for j in jobs), self.buckets)
        batch = left_padded([prompts[j] for j in jobs], [seeds[j] for j in jobs], rows, length, self.pad_id)
        return self.programs.prefill(batch, settings, max_len or length + extra_slots)

    def run_static(self, prompts, seeds, settings: DrawSettings, ending: Ending) -> list[Generation]:
        """One batch of at most `batch_size` prompts, decoded until every row has ended."""
        jobs = list(range(len(prompts)))
        state = self.prefill(prompts, seeds, jobs, self.batch_size, settings,
                             extra_slots=self.decode_slots(ending.max_new_tokens))
        return self.decode(state, len(jobs), settings, ending)

    def decode(self, state: DecodeState, n: int, settings: DrawSettings, ending: Ending) -> list[Generation]:
        """Decode a prefilled state in chunks until its first `n` rows (the live ones) end."""
        rows = [Row() for _ in range(state.rows)]
        _start(rows[:n], list(range(n)), state, ending)
        while any(row.drawing for row in rows):
            state = self._chunk(state, rows, settings, ending)
            if ending.stop_strings:  # rows stopped on the host stop decoding on the device too
                state = self.programs.stop_rows(state, np.array([row.finish == "stop" for row in rows]))
        return [ending.generation(row) for row in rows[:n]]

    def run_continuous(self, prompts, seeds, settings: DrawSettings, ending: Ending) -> list[Generation]:
        """Every prompt through one `batch_size`-row ring: the first rows prefilled together,
        then at every chunk boundary the rows whose generation ended take the next prompts
        (`_refill`). Every row keeps its own seed, draw count and token budget, so it samples
        what `run_static` samples (up to float rounding: its keys and values sit at other
        cache slots)."""
        # room for the longest prompt's bucket plus a whole row's decoding, so a row never
        # overwrites its own prompt while the ring turns
        max_len = bucket_length(max(len(p) for p in prompts), self.buckets) + self.decode_slots(ending.max_new_tokens)
        queue = collections.deque(range(len(prompts)))
        rows = [Row() for _ in range(self.batch_size)]
        results: list[Generation | None] = [None] * len(prompts)
        first = [queue.popleft() for _ in rows]
        state = self.prefill(prompts, seeds, first, len(rows), settings, max_len=max_len)
        _start(rows, first, state, ending)
        state = state.replace(cache=state.cache.replace(index=state.cache.index + max_len))  # a ring from here on
        while True:
            for row in rows:  # rows that ended hand in their generation
                if row.job is not None and row.finish is not None:
                    results[row.job], row.job = ending.generation(row), None
            free = [r for r, row in enumerate(rows) if row.job is None]
            if free and queue:
                state = self._refill(state, rows, free, queue, prompts, seeds, settings, ending)
                continue  # a refilled row may have ended on its first token
            if not any(row.job is not None for row in rows):
                return results
            state = self.programs.stop_rows(state, np.array([not row.drawing for row in rows]))
            state = self._chunk(state, rows, settings, ending)

    def _refill(self, state, rows: list[Row], free: list[int], queue: collections.deque, prompts, seeds,
                settings: DrawSettings, ending: Ending) -> DecodeState:
        """Prefill the next prompts apart and write them into the ring's `free` rows (indices)."""
        jobs = [queue.popleft() for _ in range(min(len(free), len(queue)))]
        size = self.refill_size(len(jobs))
        new = self.prefill(prompts, seeds, jobs, size, settings)
        targets = np.full(size, len(rows), np.int32)  # len(rows): out of range, a padding row dropped
        targets[: len(jobs)] = free[: len(jobs)]
        state = self.programs.insert(state, new, targets)
        _start([rows[r] for r in free[: len(jobs)]], jobs, new, ending)
        return state

    def _chunk(self, state: DecodeState, rows: list[Row], settings: DrawSettings, ending: Ending) -> DecodeState:
        """One decode chunk; each drawing row takes its drawn ids."""
        state, out = self.programs.decode_chunk(state, settings, self.chunk_tokens)
        done = np.asarray(state.done)
        for r, row in enumerate(rows):
            if row.drawing:
                ending.extend(row, out[r], bool(done[r]))
        return state


def _start(rows: list[Row], jobs: list[int], state: DecodeState, ending: Ending) -> None:
    """rows[k] takes jobs[k], whose first token is row k of the just-prefilled `state`."""
    first, done = np.asarray(state.token), np.asarray(state.done)
    for k, (row, job) in enumerate(zip(rows, jobs)):
        ending.start(row, job, first[k], bool(done[k]))
