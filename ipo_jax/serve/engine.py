"""The one thread that drives the sampler for `ipo-jax serve`: continuous batching across
requests.

Every request is split into rows (prompt x choice), each with its own seed, token budget and
stop strings. Rows with the same draw settings (temperature, top-p, top-k) share a `Ring`: a
``batch_size``-row decode batch whose KV cache runs as a ring, as the sampler's own continuous
batching (`ipo_jax.sampling.scheduler`) -- built from the sampler's compiled programs. Between
two decode chunks the worker

  * drops the rows of requests whose client went away (`Job.cancel`),
  * hands in the rows that ended (a request is answered once all its rows have),
  * fills free rows with waiting ones, first come first served, so a new request starts
    decoding at the next chunk boundary instead of waiting for the batch to drain,
  * reports each streaming row's new tokens.

A chunk is ``--chunk-tokens`` decode steps (one device call) while every row of the ring is busy,
and ``--admit-tokens`` steps (default 4) while some are free: a request that arrives then starts
within a few steps instead of a whole chunk (measured: 8 clients, 64-token requests, median time
to first token 1.6 s with 32-step chunks; see tools/results/serve.md for the figures after).
Short chunks cost a host round trip every few steps, only while the batch is not full.

Rings of different settings take turns, one chunk each. A ring's cache has room for the longest
prompt bucket plus the largest token budget of the rows it was made for, rounded up to a power
of two (so a few cache lengths, each compiled once, serve every request); a row that needs more
waits, and the rows behind it too (first come, first served), until the ring drains and a larger
one is made. A row samples what
``sampler.generate`` samples for it alone with the same seed (its tokens depend on its prompt,
seed and settings only; up to float rounding, as the sampler's continuous batching).

A sampler without those programs (any object with ``generate``) is run one ``generate`` call
per group of waiting requests with the same settings and stop strings.
"""

from __future__ import annotations

import collections
import concurrent.futures
import dataclasses
import logging
import queue
import threading
from typing import Any, Callable

import numpy as np

from ipo_jax.buckets import bucket_length, power_of_two_buckets
from ipo_jax.sampling import Generation, SamplingConfig
from ipo_jax.sampling.programs import draw_settings
from ipo_jax.sampling.scheduler import Ending, Row
from ipo_jax.serve.requests import GenerationRequest

logger = logging.getLogger(__name__)

SMALLEST_RING = 64
Update = tuple  # (choice index, ids drawn so far, the Generation once the row ended else None)


class JobCancelled(Exception):
    """The job's client went away; its rows were dropped."""


@dataclasses.dataclass(eq=False)
class Job:
    """One request in the engine: `future` gets its generations (prompt-major) or an exception;
    `on_update` (called on the worker thread) gets each row's progress when streaming."""

    request: GenerationRequest
    future: concurrent.futures.Future
    on_update: Callable[[list[Update]], None] | None = None
    cancelled: bool = False

    def __post_init__(self):
        self.results: list[Generation | None] = [None] * self.request.rows
        self.left = self.request.rows

    def cancel(self) -> None:
        """Drop the job's rows at the next chunk boundary (any thread)."""
        self.cancelled = True

    def finish_row(self, k: int, generation: Generation) -> None:
        self.results[k] = generation
        self.left -= 1
        if self.on_update is not None:
            self.on_update([(k, generation.completion_ids, generation)])
        if self.left == 0 and not self.future.done():
            self.future.set_result(self.results)

    def fail(self, error: BaseException) -> None:
        if not self.future.done():
            self.future.set_exception(error)


def ring_length(need: int) -> int:
    """The cache length of a ring whose rows need `need` slots: a power of two, at least SMALLEST_RING."""
    return max(SMALLEST_RING, bucket_length(need, power_of_two_buckets(1 << 30)))


@dataclasses.dataclass(eq=False)
class Task:
    """One row of a job waiting for, or decoding in, a ring slot."""

    job: Job
    k: int
    prompt: list[int]
    seed: int
    ending: Ending


class Ring:
    """The decode batch of one draw setting (module docstring)."""

    def __init__(self, sampler, config: SamplingConfig, stats: collections.Counter, admit_tokens: int = 0):
        self.scheduler, self.programs, self.stats = sampler.scheduler, sampler.programs, stats
        self.admit_tokens = min(admit_tokens or self.scheduler.chunk_tokens, self.scheduler.chunk_tokens)
        self.draw = draw_settings(config)
        size = sampler.batch_size
        self.waiting: collections.deque[Task] = collections.deque()
        self.slots: list[Task | None] = [None] * size
        self.rows = [Row() for _ in range(size)]
        self.state, self.length = None, 0

    @property
    def busy(self) -> bool:
        return bool(self.waiting) or any(t is not None for t in self.slots)

    def jobs(self) -> set[Job]:
        return {t.job for t in self.waiting} | {t.job for t in self.slots if t is not None}

    def need(self, tasks: list[Task]) -> int:
        longest = bucket_length(max(len(t.prompt) for t in tasks), self.scheduler.buckets)
        return longest + self.scheduler.decode_slots(max(t.ending.max_new_tokens for t in tasks))

    def step(self) -> None:
        """One turn: drop, hand in, admit, then one decode chunk (module docstring)."""
        self._drop_cancelled()
        self._admit()
        self._hand_in()
        drawing = np.array([row.drawing for row in self.rows])
        if not drawing.any():
            if not any(t is not None for t in self.slots):
                self.state = None  # nothing decoding: free the cache (a new ring fits what waits)
            return
        state = self.programs.stop_rows(self.state, ~drawing)
        # a free row: a request may arrive any moment, so come back for it within a few steps
        steps = self.admit_tokens if any(t is None for t in self.slots) else self.scheduler.chunk_tokens
        state, out = self.programs.decode_chunk(state, self.draw, steps)
        self.state = state
        self.stats["chunks"] += 1
        self.stats["decode_steps"] += steps
        done = np.asarray(state.done)
        progress = []
        for r, (row, task) in enumerate(zip(self.rows, self.slots)):
            if task is not None and row.drawing:
                task.ending.extend(row, out[r], bool(done[r]))
                if row.drawing and task.job.on_update is not None:
                    progress.append(task)
        for task in progress:
            task.job.on_update([(task.k, list(self.rows[self.slots.index(task)].ids), None)])
        self._hand_in()

    def _drop_cancelled(self) -> None:
        if any(t.job.cancelled for t in self.waiting):
            kept = [t for t in self.waiting if not t.job.cancelled]
            self.stats["cancelled_rows"] += len(self.waiting) - len(kept)
            for task in self.waiting:
                if task.job.cancelled:
                    task.job.fail(JobCancelled())
            self.waiting = collections.deque(kept)
        for r, task in enumerate(self.slots):
            if task is not None and task.job.cancelled:
                self.slots[r], self.rows[r] = None, Row()
                self.stats["cancelled_rows"] += 1
                task.job.fail(JobCancelled())

    def _hand_in(self) -> None:
        for r, (row, task) in enumerate(zip(self.rows, self.slots)):
            if task is not None and row.finish is not None:
                self.slots[r], self.rows[r] = None, Row()
                self.stats["finished_rows"] += 1
                task.job.finish_row(task.k, task.ending.generation(row))

    def _admit(self) -> None:
        free = [r for r, t in enumerate(self.slots) if t is None]
        if not free or not self.waiting:
            return
        if self.state is not None and len(free) == len(self.slots) and self.need([self.waiting[0]]) > self.length:
            self.state = None  # drained, and too small for the next row: make a larger ring
        if self.state is None:
            batch = [self.waiting.popleft() for _ in range(min(len(free), len(self.waiting)))]
            self.length = ring_length(self.need(batch))
            state = self._prefill(batch, len(self.slots), self.length)
            self._start(batch, list(range(len(batch))), state)
            # from here on the cache is a ring (as the sampler's run_continuous)
            self.state = state.replace(cache=state.cache.replace(index=state.cache.index + self.length))
            return
        batch: list[Task] = []
        while self.waiting and len(batch) < len(free) and self.need([*batch, self.waiting[0]]) <= self.length:
            batch.append(self.waiting.popleft())
        if not batch:
            return
        size = self.scheduler.refill_size(len(batch))
        new = self._prefill(batch, size, None)
        targets = np.full(size, len(self.slots), np.int32)  # out of range: a padding row, dropped
        targets[: len(batch)] = free[: len(batch)]
        self.state = self.programs.insert(self.state, new, targets)
        self._start(batch, free[: len(batch)], new)

    def _prefill(self, batch: list[Task], rows: int, max_len: int | None):
        prompts, seeds = [t.prompt for t in batch], [t.seed for t in batch]
        return self.scheduler.prefill(prompts, seeds, list(range(len(batch))), rows, self.draw, max_len=max_len)

    def _start(self, batch: list[Task], slots: list[int], state) -> None:
        first, done = np.asarray(state.token), np.asarray(state.done)
        for k, (task, r) in enumerate(zip(batch, slots)):
            self.slots[r], self.rows[r] = task, Row()
            task.ending.start(self.rows[r], task.k, first[k], bool(done[k]))
            self.stats["rows"] += 1
            # a streaming row's first token goes out now, after its prefill, not after its first
            # decode chunk (--chunk-tokens steps later): the time to first token is the prefill's
            if self.rows[r].drawing and task.job.on_update is not None:
                task.job.on_update([(task.k, list(self.rows[r].ids), None)])


class Engine:
    """The sampler's worker thread (module docstring). `submit` a checked request; `close` stops it."""

    def __init__(self, served):
        self.served = served
        self.sampler = served.sampler
        self.chunked = hasattr(self.sampler, "programs") and hasattr(self.sampler, "scheduler")
        self.stats: collections.Counter = collections.Counter()
        self._inbox: queue.Queue[Job | None] = queue.Queue()
        self._thread = threading.Thread(target=self._run, name="ipo-jax-serve-sampler", daemon=True)
        self._thread.start()

    def submit(self, request: GenerationRequest, on_update: Callable[[list[Update]], None] | None = None) -> Job:
        job = Job(request, concurrent.futures.Future(), on_update)
        self._inbox.put(job)
        return job

    def close(self) -> None:
        self._inbox.put(None)
        self._thread.join(timeout=60)

    def _ending(self, request: GenerationRequest) -> Ending:
        sampler = self.sampler
        return Ending(frozenset(np.asarray(sampler.eos_ids).tolist()), request.settings.max_new_tokens, request.stop,
                      sampler.decode)

    def _tasks(self, job: Job) -> list[Task]:
        request, ending = job.request, self._ending(job.request)
        prompts = [p for p in request.prompts for _ in range(request.n)]
        return [Task(job, k, p, s, ending) for k, (p, s) in enumerate(zip(prompts, request.row_seeds()))]

    def _run(self) -> None:
        rings: dict[Any, Ring] = {}
        while True:
            busy = any(ring.busy for ring in rings.values())
            jobs, closing = self._take(block=not busy)
            self.stats["requests"] += len(jobs)
            if not self.chunked:
                self._generate_whole(jobs)
            for job in jobs if self.chunked else ():
                s = job.request.settings
                key = (s.temperature, s.top_p, s.top_k)
                if key not in rings:
                    rings[key] = Ring(self.sampler, s, self.stats, self.served.admit_tokens)
                rings[key].waiting.extend(self._tasks(job))
            for key, ring in list(rings.items()):
                try:
                    ring.step()
                except Exception as e:  # noqa: BLE001 - this ring's requests fail; the server goes on
                    logger.exception("generation failed")
                    for job in ring.jobs():
                        job.fail(e)
                    del rings[key]
                    continue
                if not ring.busy:
                    del rings[key]
            if closing:
                for ring in rings.values():
                    for job in ring.jobs():
                        job.fail(RuntimeError("the server is shutting down"))
                return

    def _take(self, block: bool) -> tuple[list[Job], bool]:
        jobs: list[Job] = []
        try:
            item = self._inbox.get(block=block)
        except queue.Empty:
            return jobs, False
        while True:
            if item is None:
                return jobs, True
            jobs.append(item)
            try:
                item = self._inbox.get_nowait()
            except queue.Empty:
                return jobs, False

    def _generate_whole(self, jobs: list[Job]) -> None:
        """Samplers with `generate` only: one call per (settings, stop strings) group."""
        groups: dict[Any, list[Job]] = {}
        for job in jobs:
            if job.cancelled:
                job.fail(JobCancelled())
                continue
            groups.setdefault((job.request.settings, job.request.stop), []).append(job)
        for (settings, stop), group in groups.items():
            prompts, seeds = [], []
            for job in group:
                prompts += [p for p in job.request.prompts for _ in range(job.request.n)]
                seeds += job.request.row_seeds()
            try:
                generations = self.sampler.generate(prompts, settings, stop_strings=stop, row_seeds=seeds)
            except Exception as e:  # noqa: BLE001 - the requests of this call fail; the server goes on
                logger.exception("generation failed")
                for job in group:
                    job.fail(e)
                continue
            start = 0
            for job in group:
                for k in range(job.request.rows):
                    job.finish_row(k, generations[start + k])
                start += job.request.rows
