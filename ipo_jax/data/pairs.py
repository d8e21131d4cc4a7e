"""Preference-pair records: reading and validating pair files, tokenising, batch layouts, bucketing.

A pair record (one JSON object per line) has
  id        unique string
  prompt    the user message (string) or a list of chat messages {role, content}
  prefix    the shared reasoning before the compliance cue (may be empty)
  chosen    the intervened continuation from the cue on: trigger + safe continuation + answer
  rejected  the original continuation from the cue on
and may carry more fields (h, trigger, round, verdicts ...), which are kept but not used here;
`h`, when present, is checked: the compliance cue's position in the original trajectory
z = prefix + rejected, an integer or an object whose integer `char` is that position (`sentence`
and `token` optional, non-negative integers). prefix is z[<h], so h.char must equal len(prefix);
a value outside 0..len(z), or one that contradicts the prefix, is an error naming file:line and id.

Tokenisation keeps the pieces apart: prompt (chat template with its generation prompt), prefix,
suffix and the template's end-of-turn text are tokenised separately and concatenated as ids,
so the prompt + prefix ("trunk") ids are identical on both sides of a pair.

Two layouts give the same log-probs:
  duplicated     rows [trunk + chosen] and [trunk + rejected]             (2 rows per pair)
  prefix_shared  one row [trunk | chosen | rejected]; branch ids 0/1/2 keep each suffix blind
                 to the other; positions restart at the end of the trunk for the rejected side
Either way the batch holds *slots*: slot s predicts the token at row index s + 1 from the
hidden state at `slot_source[s]` (for the first rejected token that is the last trunk token,
not the token before it in the row), and masks say which slots count for which side.

Loss mask start (`mask_from`): 'cue' counts the suffix tokens only (IPO's partial DPO);
'reasoning' counts the whole completion, prefix included (DPO / SFT over the full trajectory).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np

from ipo_jax.data.records import RecordFileError, read_jsonl_records
from ipo_jax.data.tokenizer import chat_eos_text, encode_prompt, encode_text

LAYOUTS = ("duplicated", "prefix_shared")
MASK_FROM = ("cue", "reasoning")
REQUIRED_FIELDS = {"id": str, "prompt": (str, list), "prefix": str, "chosen": str, "rejected": str}


class PairFileError(RecordFileError):
    """A pair file has a malformed record; the message names file, line and field."""


def read_pair_records(path: str | Path) -> list[dict[str, Any]]:
    """Read and validate a pair JSONL file; any problem is an error naming file:line and field."""
    records = read_jsonl_records(
        path, REQUIRED_FIELDS, non_empty=("prompt", "chosen", "rejected"), kind="pair", error=PairFileError
    )
    for record in records:
        if record["chosen"] == record["rejected"]:
            raise PairFileError(f"{path}:{record['_line']} (id {record['id']!r}): chosen and rejected are identical")
        if record.get("h") is not None:
            _check_cue_position(path, record)
    return records


def _is_index(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_cue_position(path, record: dict[str, Any]) -> None:
    """h must point into the original trajectory, exactly where the prefix ends (see the module doc)."""
    where = f"{path}:{record['_line']} (id {record['id']!r})"
    h = record["h"]
    if isinstance(h, dict):
        if not _is_index(h.get("char")):
            raise PairFileError(f"{where}: field 'h.char' should be an integer character index, got {h.get('char')!r}")
        for key in ("sentence", "token"):
            if h.get(key) is not None and not (_is_index(h[key]) and h[key] >= 0):
                raise PairFileError(f"{where}: field 'h.{key}' should be a non-negative integer, got {h[key]!r}")
        char = h["char"]
    elif _is_index(h):
        char = h
    else:
        raise PairFileError(f"{where}: field 'h' should be an integer or an object with an integer 'char', got {type(h).__name__}")
    length = len(record["prefix"]) + len(record["rejected"])
    if not 0 <= char <= length:
        raise PairFileError(
            f"{where}: field 'h' is {char}, outside the sequence: the original trajectory (prefix + rejected) "
            f"has {length} characters, so h must be in 0..{length}"
        )
    if char != len(record["prefix"]):
        raise PairFileError(
            f"{where}: field 'h' is {char} but the prefix (z[<h]) has {len(record['prefix'])} characters; "
            "prefix and h disagree on where the compliance cue starts"
        )


def prompt_messages(record: dict[str, Any]) -> list[dict[str, str]]:
    prompt = record["prompt"]
    messages = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else [dict(m) for m in prompt]
    if record.get("system"):
        messages.insert(0, {"role": "system", "content": record["system"]})
    return messages


@dataclasses.dataclass(frozen=True)
class TokenizedPair:
    id: str
    prompt: np.ndarray
    prefix: np.ndarray
    chosen: np.ndarray
    rejected: np.ndarray

    @property
    def trunk(self) -> np.ndarray:
        return np.concatenate([self.prompt, self.prefix])

    def loss_start(self, mask_from: str) -> int:
        """Row index of the first token that carries loss."""
        return len(self.prompt) + (len(self.prefix) if mask_from == "cue" else 0)

    def row_length(self, layout: str) -> int:
        trunk = len(self.prompt) + len(self.prefix)
        if layout == "duplicated":
            return trunk + max(len(self.chosen), len(self.rejected))
        return trunk + len(self.chosen) + len(self.rejected)


def tokenize_pair(tokenizer, record: dict[str, Any]) -> TokenizedPair:
    eos = encode_text(tokenizer, chat_eos_text(tokenizer))
    as_ids = lambda text: np.asarray(encode_text(tokenizer, text) if text else [], np.int32)  # noqa: E731
    return TokenizedPair(
        id=record["id"],
        prompt=np.asarray(encode_prompt(tokenizer, prompt_messages(record)), np.int32),
        prefix=as_ids(record["prefix"]),
        chosen=np.concatenate([as_ids(record["chosen"]), np.asarray(eos, np.int32)]),
        rejected=np.concatenate([as_ids(record["rejected"]), np.asarray(eos, np.int32)]),
    )


def fit_to_length(pair: TokenizedPair, max_length: int, layout: str) -> TokenizedPair | None:
    """Truncation rule: keep the trunk, cut the suffix tails until the row fits.

    In the prefix-shared layout the budget after the trunk is split between the suffixes,
    the shorter one kept whole if it fits in half. Returns None when the trunk leaves no room
    for at least one token of each suffix (the caller counts and reports such pairs).
    """
    if pair.row_length(layout) <= max_length:
        return pair
    budget = max_length - len(pair.prompt) - len(pair.prefix)
    c, r = len(pair.chosen), len(pair.rejected)
    if layout == "duplicated":
        c, r = min(c, budget), min(r, budget)
    else:
        half = budget // 2
        if c <= half:
            r = budget - c
        elif r <= half:
            c = budget - r
        else:
            c, r = half, budget - half
    if c < 1 or r < 1:
        return None
    return dataclasses.replace(pair, chosen=pair.chosen[:c], rejected=pair.rejected[:r])


def bucket_length(n: int, buckets: Sequence[int]) -> int:
    for b in sorted(buckets):
        if n <= b:
            return b
    raise ValueError(f"row of {n} tokens is longer than the largest bucket {max(buckets)}")


def default_buckets(max_length: int, smallest: int = 64, steps_per_octave: int = 1) -> list[int]:
    """Row lengths to compile, from `smallest` up to max_length (included).

    steps_per_octave 1: powers of two (at most half of a row is padding); 2: powers of two and
    1.5x each in between (64, 96, 128, 192, ...; at most a third is padding) for one more
    compiled shape per octave. Training uses 2: on the sample pairs with the Qwen3 tokenizer the
    prefix-shared rows (134-156 tokens) went from 44% padding (256-token rows) to 26% (192).
    """
    if steps_per_octave not in (1, 2):
        raise ValueError(f"steps_per_octave must be 1 or 2, got {steps_per_octave}")
    out, b = [], smallest
    while b < max_length:
        out.append(b)
        if steps_per_octave == 2 and b * 3 // 2 < max_length and (b * 3) % 2 == 0:
            out.append(b * 3 // 2)
        b *= 2
    return out + [max_length]


def pack_pairs(
    pairs: Sequence[TokenizedPair | None], *, layout: str, mask_from: str, length: int
) -> dict[str, np.ndarray]:
    """Pack pairs (None = a padding pair) into one batch of fixed shape.

    Returns model inputs tokens / positions / segment_ids / branch_ids [R,T], loss slots
    slot_source / slot_target / slot_pair [R,T] and slot_chosen / slot_rejected [R,T] (bool),
    and pair_valid [P]. R = 2P (duplicated) or P (prefix_shared).
    """
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")
    if mask_from not in MASK_FROM:
        raise ValueError(f"mask_from must be one of {MASK_FROM}, got {mask_from!r}")
    P = len(pairs)
    R = 2 * P if layout == "duplicated" else P
    T = length
    out = {
        "tokens": np.zeros((R, T), np.int32),
        "positions": np.zeros((R, T), np.int32),
        "segment_ids": np.zeros((R, T), np.int32),
        "branch_ids": np.zeros((R, T), np.int32),
        "slot_source": np.zeros((R, T), np.int32),
        "slot_target": np.zeros((R, T), np.int32),
        "slot_pair": np.zeros((R, T), np.int32),
        "slot_chosen": np.zeros((R, T), bool),
        "slot_rejected": np.zeros((R, T), bool),
        "pair_valid": np.zeros((P,), bool),
    }
    for p, pair in enumerate(pairs):
        if pair is None:
            continue
        if pair.row_length(layout) > T:
            raise ValueError(f"pair {pair.id!r}: {pair.row_length(layout)} tokens do not fit in length {T}")
        out["pair_valid"][p] = True
        trunk, start = pair.trunk, pair.loss_start(mask_from)
        if layout == "duplicated":
            for side, suffix in ((0, pair.chosen), (1, pair.rejected)):
                row = 2 * p + side
                ids = np.concatenate([trunk, suffix])
                n = len(ids)
                out["tokens"][row, :n] = ids
                out["positions"][row, :n] = np.arange(n)
                out["segment_ids"][row, :n] = 1
                out["slot_source"][row, : n - 1] = np.arange(n - 1)
                out["slot_target"][row, : n - 1] = ids[1:]
                out["slot_pair"][row] = p
                counts = np.arange(1, n) >= start  # target index s + 1 carries loss
                out["slot_chosen" if side == 0 else "slot_rejected"][row, : n - 1] = counts
        else:
            H, c, r = len(trunk), len(pair.chosen), len(pair.rejected)
            ids = np.concatenate([trunk, pair.chosen, pair.rejected])
            n = H + c + r
            out["tokens"][p, :n] = ids
            out["positions"][p, :n] = np.concatenate([np.arange(H + c), H + np.arange(r)])
            out["segment_ids"][p, :n] = 1
            out["branch_ids"][p, :n] = np.repeat([0, 1, 2], [H, c, r])
            source = np.arange(n - 1)
            source[H + c - 1] = H - 1  # the first rejected token is predicted from the trunk's end
            out["slot_source"][p, : n - 1] = source
            out["slot_target"][p, : n - 1] = ids[1:]
            out["slot_pair"][p] = p
            target_index = np.arange(1, n)
            in_trunk = target_index < H
            counts = target_index >= start
            out["slot_chosen"][p, : n - 1] = counts & (in_trunk | (target_index < H + c))
            out["slot_rejected"][p, : n - 1] = counts & (in_trunk | (target_index >= H + c))
    return out


@dataclasses.dataclass
class PairBatches:
    """Deterministic, resumable batches over a list of tokenized pairs.

    Epoch e visits the pairs in the order of a permutation seeded by (seed, e); batch b of
    that epoch is the same on every run, so (epoch, batch index) is a complete data position.
    A batch holds `micro_batches` packed micro-batches of `pairs_per_micro` pairs each, all
    padded to one bucketed length; a short last batch is filled with padding pairs.
    """

    pairs: list[TokenizedPair]
    pairs_per_micro: int
    micro_batches: int
    layout: str
    mask_from: str
    buckets: Sequence[int]
    seed: int = 0
    shuffle: bool = True

    @property
    def pairs_per_batch(self) -> int:
        return self.pairs_per_micro * self.micro_batches

    @property
    def batches_per_epoch(self) -> int:
        return -(-len(self.pairs) // self.pairs_per_batch)

    def order(self, epoch: int) -> np.ndarray:
        if not self.shuffle:
            return np.arange(len(self.pairs))
        return np.random.default_rng([self.seed, epoch]).permutation(len(self.pairs))

    def batch(self, epoch: int, index: int) -> tuple[dict[str, np.ndarray], np.ndarray]:
        """Arrays [M, ...] for batch `index` of `epoch`, and the dataset indices of its pairs (-1 = padding)."""
        order = self.order(epoch)
        chosen = order[index * self.pairs_per_batch : (index + 1) * self.pairs_per_batch]
        idx = np.full(self.pairs_per_batch, -1, np.int64)
        idx[: len(chosen)] = chosen
        members = [self.pairs[i] if i >= 0 else None for i in idx]
        length = bucket_length(max(p.row_length(self.layout) for p in members if p is not None), self.buckets)
        micro = [
            pack_pairs(
                members[m * self.pairs_per_micro : (m + 1) * self.pairs_per_micro],
                layout=self.layout,
                mask_from=self.mask_from,
                length=length,
            )
            for m in range(self.micro_batches)
        ]
        return {k: np.stack([mb[k] for mb in micro]) for k in micro[0]}, idx

    def iterate(self, start_epoch: int = 0, start_batch: int = 0) -> Iterator[tuple[int, int, dict, np.ndarray]]:
        epoch, index = start_epoch, start_batch
        while True:
            if index >= self.batches_per_epoch:
                epoch, index = epoch + 1, 0
            batch, idx = self.batch(epoch, index)
            yield epoch, index, batch, idx
            index += 1
