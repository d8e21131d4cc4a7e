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

Token ids (optional; `ipo-jax build-pairs` writes them). A record may also carry
  prefix_ids, chosen_ids, rejected_ids   the policy tokenizer's ids as sampled (all three or none;
                 non-negative integers below the tokenizer's size; chosen and rejected non-empty)
  finish_reasons {"chosen": r, "rejected": r}, r one of eos | stop | length (absent: both "stop")
Training then uses these ids, never re-tokenising the text (which can split differently at the
cue: "...chemistry. Let" is '.', ' Let' as sampled but '.', ' ', 'Let' when the prefix text
ending in a space is tokenised on its own). The prompt is still rendered by the chat template
(`encode_prompt`, as the sampler was prompted). End of turn: a side whose ids end with one of
the tokenizer's stop tokens (`stop_token_ids`) is used as is; otherwise the template's
end-of-turn text is appended, as the text path does. A side whose finish reason is "length" was
cut off at the token limit and is never trained on as a complete answer: such a record is an
error (build-pairs never writes one; remove it from a hand-made file). Text-only records (no
ids) are tokenised piecewise as above; their `finish_reasons`, when given, are checked the same.

Several pair files (`read_pair_sources`, the training config's data.pairs):
  "a.jsonl"                      one file, every pair once per epoch
  "a.jsonl,b.jsonl:0.5"          comma-separated files, each with an optional ":weight" (default 1)
A weight w > 0 puts round(w * n) of the file's n usable pairs (those that fit max_length) in every
epoch, rounded half up: floor(w) copies of each pair, plus a draw without replacement of the
rest, made once per run from data.seed (so w = 0.5 trains on the same half in every epoch; change
data.seed for another half). Counted on all the file's records when it is read, round(w * n) must
be 1 to MAX_EPOCH_PAIRS (10^8): a weight that selects nothing, or one that would fill memory, is an
error naming the file and the weights that are accepted. Ids must be unique across the files: a
repeated id is an error naming both places. Each record keeps `_file` and `_source` (the file's
index in the spec).

Packing (`PairBatches(packing=True)`, prefix_shared only): several pairs share a row of the
largest bucket's length (data.max_length), each pair its own segment (segment ids 1, 2, ... in
the row), so no token attends across pairs and the log-probs equal the unpacked layout's. Rows
are filled by best-fit decreasing once per run (ties broken by data.seed), then visited in an
order seeded by (seed, epoch); a micro-batch is `pairs_per_micro` rows and has a fixed number of
pair slots (the most pairs any `pairs_per_micro` rows hold), so every step has one shape.
"""

from __future__ import annotations

import bisect
import dataclasses
import math
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np

from ipo_jax.buckets import bucket_length
from ipo_jax.data.records import RecordFileError, check_token_ids, read_jsonl_records
from ipo_jax.data.tokenizer import chat_eos_text, encode_prompt, encode_text, stop_token_ids

LAYOUTS = ("duplicated", "prefix_shared")
MASK_FROM = ("cue", "reasoning")
REQUIRED_FIELDS = {"id": str, "prompt": (str, list), "prefix": str, "chosen": str, "rejected": str}
ID_FIELDS = ("prefix_ids", "chosen_ids", "rejected_ids")
FINISH_REASONS = ("eos", "stop", "length")  # the sampler's: end-of-sequence token, stop token/string, token limit


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
        _check_token_fields(path, record)
        record["_file"] = str(path)
    return records


def _check_token_fields(path, record: dict[str, Any]) -> None:
    """prefix_ids / chosen_ids / rejected_ids (all or none) and finish_reasons; see the module doc.
    The ids' upper bound (the tokenizer's size) is checked when tokenising (`tokenize_pair`)."""
    where = f"{path}:{record['_line']} (id {record['id']!r})"
    present = [f for f in ID_FIELDS if record.get(f) is not None]
    if present and len(present) != len(ID_FIELDS):
        missing = [f for f in ID_FIELDS if f not in present]
        raise PairFileError(f"{where}: has {', '.join(present)} but not {', '.join(missing)}; token ids come as all three or none")
    for field in present:  # in [0, 2**31) here; below the tokenizer's size when tokenising
        check_token_ids(record[field], where, field, non_empty=field != "prefix_ids", error=PairFileError)
    if present and record["chosen_ids"] == record["rejected_ids"]:
        raise PairFileError(f"{where}: chosen_ids and rejected_ids are identical")
    reasons = record.get("finish_reasons")
    if reasons is None:
        return
    if not isinstance(reasons, dict):
        raise PairFileError(f"{where}: field 'finish_reasons' should be an object {{\"chosen\": ..., \"rejected\": ...}}, got {type(reasons).__name__}")
    for side in ("chosen", "rejected"):
        reason = reasons.get(side, "stop")
        if reason not in FINISH_REASONS:
            raise PairFileError(f"{where}: field 'finish_reasons.{side}' is {reason!r}; expected one of {', '.join(FINISH_REASONS)}")
        if reason == "length":
            raise PairFileError(
                f"{where}: field 'finish_reasons.{side}' is 'length': the {side} side was cut off at the token limit "
                "and must not be trained on as a complete answer; remove the record (build-pairs never writes one)"
            )


@dataclasses.dataclass(frozen=True)
class PairSource:
    """One pair file of data.pairs and its mixing weight (see the module doc)."""

    path: Path
    weight: float = 1.0


def parse_pair_sources(spec: str) -> list[PairSource]:
    """'a.jsonl,b.jsonl:0.5' -> [PairSource(a, 1.0), PairSource(b, 0.5)]; bad input is a PairFileError
    (a ValueError) naming the spec and the file. An item that names an existing file is a path
    even if it contains ':'; otherwise the text after its last ':' is the weight."""
    items = [item.strip() for item in str(spec).split(",")]
    if not str(spec).strip() or not all(items):
        raise PairFileError(f"data.pairs {spec!r}: expected one pair file or comma-separated files with optional ':weight'")
    sources = []
    for item in items:
        path, weight = item, 1.0
        if not Path(item).is_file() and ":" in item:
            path, _, text = item.rpartition(":")
            try:
                weight = float(text)
            except ValueError:
                raise PairFileError(f"data.pairs {spec!r}: weight {text!r} of {path} is not a number") from None
            if not math.isfinite(weight) or weight <= 0:
                raise PairFileError(f"data.pairs {spec!r}: weight {text!r} of {path} must be a finite number > 0")
        if not Path(path).is_file():
            what = "is a directory" if Path(path).is_dir() else "not found"
            raise PairFileError(f"data.pairs {spec!r}: pair file {path} {what}")
        sources.append(PairSource(Path(path), weight))
    paths = [s.path.resolve() for s in sources]
    if len(set(paths)) != len(paths):
        raise PairFileError(f"data.pairs {spec!r}: a file is named twice; give it one weight instead")
    return sources


def read_pair_sources(spec: str) -> tuple[list[dict[str, Any]], list[PairSource]]:
    """Records of every file of a data.pairs spec, in spec order, each with `_source` (the file's
    index) and `_file`; an id repeated across files is an error naming both places."""
    sources = parse_pair_sources(spec)
    records, seen = [], {}
    for index, source in enumerate(sources):
        in_file = read_pair_records(source.path)
        _check_weight_count(spec, source, len(in_file))
        for record in in_file:
            if record["id"] in seen:
                raise PairFileError(
                    f"{source.path}:{record['_line']}: id {record['id']!r} is also at {seen[record['id']]}; "
                    "ids must be unique across the files of data.pairs"
                )
            seen[record["id"]] = f"{source.path}:{record['_line']}"
            record["_source"] = index
            records.append(record)
    return records, sources


MAX_EPOCH_PAIRS = 10**8  # what one file's weight may put in an epoch (800 MB of pair indices); real sets are far smaller


def _check_weight_count(spec: str, source: PairSource, n: int) -> None:
    """A weight must select at least one of the file's n pairs and at most MAX_EPOCH_PAIRS per epoch
    (round(w * n) counted on every record of the file; the length rule may drop some later)."""
    if source.weight == 1.0:
        return
    count = source.weight * n + 0.5  # floored: round half up, as mixture_members counts
    if math.isfinite(count) and 1 <= math.floor(count) <= MAX_EPOCH_PAIRS:
        return
    what = "none of" if count < 1 else f"{source.weight:g} x"
    raise PairFileError(f"data.pairs {spec!r}: weight {source.weight:g} of {source.path} puts {what} its {n} pairs in "
                        f"every epoch; expected a weight from {0.5 / n:.3g} to {MAX_EPOCH_PAIRS / n:.3g} (1 to "
                        f"{MAX_EPOCH_PAIRS:,} pairs per epoch)")


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
    source: int = 0  # index of its file in data.pairs (for the mixing weights)

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


def has_token_ids(record: dict[str, Any]) -> bool:
    return record.get("chosen_ids") is not None


def tokenize_pair(tokenizer, record: dict[str, Any]) -> TokenizedPair:
    """Prompt by the chat template; prefix / chosen / rejected from the record's ids when it has
    them (checked against the tokenizer's size), else tokenised from the text (see the module doc)."""
    eos = np.asarray(encode_text(tokenizer, chat_eos_text(tokenizer)), np.int32)
    prompt = np.asarray(encode_prompt(tokenizer, prompt_messages(record)), np.int32)
    source = int(record.get("_source") or 0)
    if not has_token_ids(record):
        as_ids = lambda text: np.asarray(encode_text(tokenizer, text) if text else [], np.int32)  # noqa: E731
        return TokenizedPair(
            id=record["id"],
            prompt=prompt,
            prefix=as_ids(record["prefix"]),
            chosen=np.concatenate([as_ids(record["chosen"]), eos]),
            rejected=np.concatenate([as_ids(record["rejected"]), eos]),
            source=source,
        )
    size, stops = len(tokenizer), set(stop_token_ids(tokenizer))
    where = f"{record.get('_file', 'pairs')}:{record.get('_line', '?')} (id {record['id']!r})"
    ids = {}
    for field in ID_FIELDS:
        values = np.asarray(record[field], np.int64)
        if values.size and (values.min() < 0 or values.max() >= size):
            bad = int(values[(values < 0) | (values >= size)][0])
            raise PairFileError(
                f"{where}: field {field!r} holds token id {bad}, outside the tokenizer's {size} ids; "
                "the ids must come from the tokenizer this run trains with"
            )
        ids[field] = values.astype(np.int32)

    def completed(values: np.ndarray) -> np.ndarray:
        # a side that stopped on an end-of-turn token carries it; otherwise end the turn as the text path does
        return values if values.size and int(values[-1]) in stops else np.concatenate([values, eos])

    return TokenizedPair(
        id=record["id"],
        prompt=prompt,
        prefix=ids["prefix_ids"],
        chosen=completed(ids["chosen_ids"]),
        rejected=completed(ids["rejected_ids"]),
        source=source,
    )


def pair_length(pair: TokenizedPair) -> int:
    """The pair's length for the length rule: prompt + prefix + chosen + rejected tokens (its
    prefix-shared row; each duplicated row, trunk + one side, is no longer)."""
    return len(pair.prompt) + len(pair.prefix) + len(pair.chosen) + len(pair.rejected)


def length_problem(pair: TokenizedPair, max_length: int) -> str | None:
    """Why the pair does not fit `max_length` (None when it fits): 'trunk_too_long' when prompt +
    prefix alone leave no room for a token of each side, else 'pair_too_long'."""
    if pair_length(pair) <= max_length:
        return None
    return "trunk_too_long" if len(pair.prompt) + len(pair.prefix) + 2 > max_length else "pair_too_long"


def fit_to_length(pair: TokenizedPair, max_length: int) -> TokenizedPair | None:
    """The length rule, the same for every layout: the pair itself when prompt + prefix + chosen +
    rejected fit in `max_length` tokens, else None (the caller drops it and counts the reason,
    `length_problem`). A pair is never cut: a chosen side without its answer and end of turn would
    be trained as a complete answer. One rule for both layouts keeps the set of trained pairs, hence
    the numbers, the same: the prefix-shared row is the whole pair, and each duplicated row (trunk +
    one side) is shorter than it, so a pair that fits one layout's rows fits the other's.
    """
    return pair if pair_length(pair) <= max_length else None


def _empty_batch(rows: int, length: int, pair_slots: int) -> dict[str, np.ndarray]:
    return {
        "tokens": np.zeros((rows, length), np.int32),
        "positions": np.zeros((rows, length), np.int32),
        "segment_ids": np.zeros((rows, length), np.int32),
        "branch_ids": np.zeros((rows, length), np.int32),
        "slot_source": np.zeros((rows, length), np.int32),
        "slot_target": np.zeros((rows, length), np.int32),
        "slot_pair": np.zeros((rows, length), np.int32),
        "slot_chosen": np.zeros((rows, length), bool),
        "slot_rejected": np.zeros((rows, length), bool),
        "pair_valid": np.zeros((pair_slots,), bool),
    }


def _place_prefix_shared(out, row: int, offset: int, pair: TokenizedPair, slot: int, segment: int, mask_from: str) -> int:
    """Write one pair as segment `segment` of `row` from column `offset`: [trunk | chosen | rejected].
    Returns the columns used. The segment's last slot predicts nothing (it would cross into the next segment)."""
    trunk, start = pair.trunk, pair.loss_start(mask_from)
    H, c, r = len(trunk), len(pair.chosen), len(pair.rejected)
    ids = np.concatenate([trunk, pair.chosen, pair.rejected])
    n = H + c + r
    cols, slots = slice(offset, offset + n), slice(offset, offset + n - 1)
    out["tokens"][row, cols] = ids
    out["positions"][row, cols] = np.concatenate([np.arange(H + c), H + np.arange(r)])
    out["segment_ids"][row, cols] = segment
    out["branch_ids"][row, cols] = np.repeat([0, 1, 2], [H, c, r])
    source = offset + np.arange(n - 1)
    source[H + c - 1] = offset + H - 1  # the first rejected token is predicted from the trunk's end
    out["slot_source"][row, slots] = source
    out["slot_target"][row, slots] = ids[1:]
    out["slot_pair"][row, slots] = slot
    target_index = np.arange(1, n)
    in_trunk = target_index < H
    counts = target_index >= start
    out["slot_chosen"][row, slots] = counts & (in_trunk | (target_index < H + c))
    out["slot_rejected"][row, slots] = counts & (in_trunk | (target_index >= H + c))
    return n


def pack_pairs(
    pairs: Sequence[TokenizedPair | None], *, layout: str, mask_from: str, length: int
) -> dict[str, np.ndarray]:
    """Pack pairs (None = a padding pair) into one batch of fixed shape, one pair per row (two in duplicated).

    Returns model inputs tokens / positions / segment_ids / branch_ids [R,T], loss slots
    slot_source / slot_target / slot_pair [R,T] and slot_chosen / slot_rejected [R,T] (bool),
    and pair_valid [P]. R = 2P (duplicated) or P (prefix_shared).
    """
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")
    if mask_from not in MASK_FROM:
        raise ValueError(f"mask_from must be one of {MASK_FROM}, got {mask_from!r}")
    P = len(pairs)
    out = _empty_batch(2 * P if layout == "duplicated" else P, length, P)
    T = length
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
            out["slot_pair"][p] = p
            _place_prefix_shared(out, p, 0, pair, p, 1, mask_from)
    return out


def pack_rows(
    rows: Sequence[Sequence[TokenizedPair]], *, mask_from: str, length: int, num_rows: int, pair_slots: int
) -> dict[str, np.ndarray]:
    """Packed prefix-shared micro-batch: row i holds the pairs rows[i] one after another, pair j of
    the row as segment j + 1; pairs take slots 0, 1, ... in row order. Rows past len(rows) and
    slots past the pairs are padding. Same arrays as `pack_pairs`, with [num_rows, length] rows
    and [pair_slots] pairs."""
    if mask_from not in MASK_FROM:
        raise ValueError(f"mask_from must be one of {MASK_FROM}, got {mask_from!r}")
    if len(rows) > num_rows:
        raise ValueError(f"{len(rows)} packed rows do not fit a micro-batch of {num_rows}")
    out = _empty_batch(num_rows, length, pair_slots)
    slot = 0
    for r, members in enumerate(rows):
        used = sum(p.row_length("prefix_shared") for p in members)
        if used > length:
            raise ValueError(f"pairs {[p.id for p in members]}: {used} tokens do not fit in length {length}")
        if slot + len(members) > pair_slots:
            raise ValueError(f"{slot + len(members)} pairs do not fit {pair_slots} pair slots")
        offset = 0
        for segment, pair in enumerate(members, 1):
            offset += _place_prefix_shared(out, r, offset, pair, slot, segment, mask_from)
            out["pair_valid"][slot] = True
            slot += 1
    return out


def best_fit_decreasing(lengths: Sequence[int], capacity: int, tie_break: Sequence[int]) -> list[list[int]]:
    """Bin packing: items (indices into `lengths`) longest first, ties in `tie_break` order, each
    into the fullest bin it still fits (a new bin when none does). Returns the bins in the order
    they were opened, each listing its items in the order placed. Deterministic."""
    order = sorted(range(len(lengths)), key=lambda i: (-int(lengths[i]), int(tie_break[i])))
    bins: list[list[int]] = []
    free: list[tuple[int, int]] = []  # (room left, bin index), sorted: the first with room >= L fits best
    for i in order:
        need = int(lengths[i])
        if need > capacity:
            raise ValueError(f"item {i} of {need} tokens is longer than the row length {capacity}")
        k = bisect.bisect_left(free, (need, -1))
        if k == len(free):
            bins.append([i])
            room, b = capacity - need, len(bins) - 1
        else:
            room, b = free.pop(k)
            bins[b].append(i)
            room -= need
        if room > 0:
            bisect.insort(free, (room, b))
    return bins


def mixture_members(sources: Sequence[int], weights: Sequence[float], seed: int) -> np.ndarray:
    """The pair indices one epoch visits under mixing weights (see the module doc): for file f with
    n_f pairs, round(w_f * n_f) (half up) indices, floor of it whole copies and the rest drawn
    without replacement by a generator seeded with (seed, f). Sorted, so only the counts matter."""
    sources = np.asarray(sources, np.int64)
    members = []
    for f, weight in enumerate(weights):
        own = np.flatnonzero(sources == f)
        count = int(math.floor(weight * len(own) + 0.5))
        copies, rest = divmod(count, len(own)) if len(own) else (0, 0)
        members += [own] * copies
        if rest:
            drawn = np.random.default_rng([seed, _MIX_STREAM, f]).choice(len(own), rest, replace=False)
            members.append(own[np.sort(drawn)])
    out = np.sort(np.concatenate(members)) if members else np.zeros(0, np.int64)
    if not out.size:
        raise ValueError("the mixing weights select no pairs")
    return out


_MIX_STREAM = 0x4D4958  # 'MIX': keeps the mixture's draws apart from the epoch permutations
_PACK_STREAM = 0x5041434B  # 'PACK': tie-breaking of the row packing


@dataclasses.dataclass
class PairBatches:
    """Deterministic, resumable batches over a list of tokenized pairs.

    Epoch e visits the pairs in the order of a permutation seeded by (seed, e); batch b of
    that epoch is the same on every run, so (epoch, batch index) is a complete data position.
    A batch holds `micro_batches` packed micro-batches of `pairs_per_micro` pairs each, all
    padded to one bucketed length; a short last batch is filled with padding pairs.

    `weights` (one per source file, see `mixture_members`) choose which pairs an epoch holds;
    by default every pair once.

    packing=True (prefix_shared only): the epoch's pairs are packed once into rows of
    max(buckets) tokens (`best_fit_decreasing`, ties by seed); epoch e visits the rows in an order
    seeded by (seed, e); a micro-batch is `pairs_per_micro` rows with `pair_slots` pair slots
    (the most pairs any `pairs_per_micro` rows hold); a batch is padded to the bucket of its longest row.
    """

    pairs: list[TokenizedPair]
    pairs_per_micro: int
    micro_batches: int
    layout: str
    mask_from: str
    buckets: Sequence[int]
    seed: int = 0
    shuffle: bool = True
    packing: bool = False
    weights: Sequence[float] = ()

    def __post_init__(self):
        if self.weights:
            self.members = mixture_members([p.source for p in self.pairs], self.weights, self.seed)
        else:
            self.members = np.arange(len(self.pairs))
        self.rows: list[np.ndarray] = []
        self.pair_slots = self.pairs_per_micro
        if self.packing:
            if self.layout != "prefix_shared":
                raise ValueError(f"packing needs layout 'prefix_shared', got {self.layout!r}")
            lengths = [self.pairs[i].row_length(self.layout) for i in self.members]
            tie_break = np.random.default_rng([self.seed, _PACK_STREAM]).permutation(len(lengths))
            bins = best_fit_decreasing(lengths, max(self.buckets), tie_break)
            self.rows = [self.members[np.asarray(b)] for b in bins]
            sizes = sorted((len(b) for b in bins), reverse=True)
            self.pair_slots = sum(sizes[: self.pairs_per_micro])

    @property
    def pairs_per_batch(self) -> int:
        return self.pairs_per_micro * self.micro_batches

    @property
    def units(self) -> int:
        """What one epoch deals out: pairs, or packed rows with packing."""
        return len(self.rows) if self.packing else len(self.members)

    @property
    def batches_per_epoch(self) -> int:
        return -(-self.units // self.pairs_per_batch)

    def _permutation(self, epoch: int) -> np.ndarray:
        if not self.shuffle:
            return np.arange(self.units)
        return np.random.default_rng([self.seed, epoch]).permutation(self.units)

    def order(self, epoch: int) -> np.ndarray:
        """The pair indices of `epoch` in visiting order."""
        if self.packing:
            rows = self._permutation(epoch)
            return np.concatenate([self.rows[r] for r in rows]) if len(rows) else np.zeros(0, np.int64)
        return self.members[self._permutation(epoch)]

    def batch(self, epoch: int, index: int) -> tuple[dict[str, np.ndarray], np.ndarray]:
        """Arrays [M, ...] for batch `index` of `epoch`, and the dataset indices of its pairs (-1 = padding)."""
        if self.packing:
            return self._packed_batch(epoch, index)
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

    def _packed_batch(self, epoch: int, index: int) -> tuple[dict[str, np.ndarray], np.ndarray]:
        R = self.pairs_per_micro
        visit = self._permutation(epoch)[index * self.pairs_per_batch : (index + 1) * self.pairs_per_batch]
        rows = [self.rows[r] for r in visit]
        used = max(sum(self.pairs[i].row_length("prefix_shared") for i in row) for row in rows)
        length = bucket_length(used, self.buckets)
        micro, idx = [], np.full(self.micro_batches * self.pair_slots, -1, np.int64)
        for m in range(self.micro_batches):
            mine = rows[m * R : (m + 1) * R]
            micro.append(pack_rows([[self.pairs[i] for i in row] for row in mine], mask_from=self.mask_from,
                                   length=length, num_rows=R, pair_slots=self.pair_slots))
            flat = np.concatenate(mine) if mine else np.zeros(0, np.int64)
            idx[m * self.pair_slots : m * self.pair_slots + len(flat)] = flat
        return {k: np.stack([mb[k] for mb in micro]) for k in micro[0]}, idx

    def describe(self, files: Sequence[str] = ()) -> str:
        """One line (two with packing) saying what an epoch holds, for the run's log."""
        counts = np.bincount([self.pairs[i].source for i in self.members], minlength=len(files) or 1)
        kept = np.bincount([p.source for p in self.pairs], minlength=len(files) or 1)
        weights = list(self.weights or [1.0] * len(files))
        if len(files) > 1 or weights != [1.0] * len(files):
            parts = [f"{f}: {kept[k]} pairs x {w:g} = {counts[k]}" for k, (f, w) in enumerate(zip(files, weights))]
            line = f"epoch: {len(self.members)} pairs ({'; '.join(parts)})"
        else:
            line = f"epoch: {len(self.members)} pairs"
        line += f", {self.batches_per_epoch} batches"
        if self.packing:
            line += (f"\npacking: {len(self.rows)} rows of {max(self.buckets)} tokens, {self.pairs_per_micro} rows and "
                     f"{self.pair_slots} pair slots per micro-batch, {self.padding_share():.1%} padding")
        return line

    def padding_share(self, epoch: int = 0) -> float:
        """Share of the token positions in `epoch`'s batches that are padding, from the lengths alone
        (equal to the share of segment id 0 in the built batches; a test checks that)."""
        layout_rows = 2 if self.layout == "duplicated" else 1
        real_of = lambda p: 2 * len(p.trunk) + len(p.chosen) + len(p.rejected) if layout_rows == 2 else p.row_length(self.layout)  # noqa: E731
        if self.packing:
            row_used = np.array([sum(self.pairs[i].row_length(self.layout) for i in row) for row in self.rows])
            units = row_used[self._permutation(epoch)]
            rows_per_batch = self.pairs_per_batch
        else:
            units = np.array([self.pairs[i].row_length(self.layout) for i in self.order(epoch)])
            rows_per_batch = self.pairs_per_batch * layout_rows
        real = sum(real_of(self.pairs[i]) for i in self.members)
        total = 0
        for b in range(self.batches_per_epoch):
            longest = int(units[b * self.pairs_per_batch : (b + 1) * self.pairs_per_batch].max())
            total += rows_per_batch * bucket_length(longest, self.buckets)
        return 1 - real / total

    def iterate(self, start_epoch: int = 0, start_batch: int = 0) -> Iterator[tuple[int, int, dict, np.ndarray]]:
        epoch, index = start_epoch, start_batch
        while True:
            if index >= self.batches_per_epoch:
                epoch, index = epoch + 1, 0
            batch, idx = self.batch(epoch, index)
            yield epoch, index, batch, idx
            index += 1
