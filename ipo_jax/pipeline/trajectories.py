"""Trajectory records as `ipo-jax csr` reads them (what `ipo-jax sample` writes): the whole file
read and checked before csr loads a model, samples a token or writes any output.

A trajectory record (one JSON object per line, `ipo_jax.data.records` checks the line itself):
  id              a non-empty string that is also a safe file name (csr writes ``<id>.csr.csv``):
                  letters, digits, '.', '_', '-', starting with a letter or digit, no '..'
  prompt          the user message (string) or chat messages
  reasoning       the reasoning text csr measures
  kind            optional: harmful | benign (absent: harmful); csr analyses csr.kind ('' = all)
  completion_ids  optional: the completion's token ids as sampled; integers in [0, the policy
                  tokenizer's size) -- a local model is at least that large (checked when it
                  loads), so an id below it is a row of its embedding -- and the reasoning of
                  their decode (special tokens dropped, as the policy decodes) must be `reasoning`.
Without completion_ids csr tokenises the completion text (``<think>\\n`` + reasoning when the
rendered prompt does not open the reasoning itself), which the tokenizer must decode back to
itself: the rules of `ipo_jax.pipeline.csr.continuation_points`, checked here for every record
up front so a bad record fails the stage before its first trajectory's files are written.
`read_trajectories(path, kind=...)` reads the file and checks what needs no tokenizer (ids, kinds,
token ids in [0, 2**31)); `check_trajectory_tokens(records, path, tokenizer)` then checks every
record against the policy tokenizer. Errors are `TrajectoryFileError` (a ValueError: exit code 2)
naming file:line, id and field.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from ipo_jax.data.pairs import prompt_messages
from ipo_jax.data.prompts import PROMPT_KINDS
from ipo_jax.data.records import RecordFileError, check_token_ids, read_jsonl_records
from ipo_jax.data.tokenizer import THINK_OPEN, encode_text, render_prompt
from ipo_jax.rollout.completion import reasoning_span

REQUIRED_FIELDS = {"id": str, "prompt": (str, list), "reasoning": str}
SAFE_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")  # csr names its output files by the id


class TrajectoryFileError(RecordFileError):
    """A trajectory file has a record csr cannot analyse; the message names file:line, id and field."""


def _clip(text: str, limit: int = 80) -> str:
    return text if len(text) <= limit else text[: limit // 2] + " ... " + text[-limit // 2 :]


def _decode(tokenizer, ids) -> str:
    # the policy's decode (as ipo_jax.pipeline.csr decodes): special tokens dropped, no clean-up
    return tokenizer.decode(list(ids), skip_special_tokens=True, clean_up_tokenization_spaces=False)


def _located(record: dict[str, Any], path) -> str:
    return f"{path}:{record['_line']} (id {record['id']!r})"


def check_trajectory_fields(record: dict[str, Any], path) -> None:
    """One record's id, kind and completion_ids (in [0, 2**31)): what needs no tokenizer."""
    located = _located(record, path)
    if not SAFE_ID.fullmatch(record["id"]) or ".." in record["id"]:
        raise TrajectoryFileError(f"{located}: field 'id' is not a safe file name; expected letters, digits, '.', '_', "
                                  "'-', starting with a letter or digit (csr writes <id>.csr.csv)")
    if record.get("kind") is not None and record["kind"] not in PROMPT_KINDS:
        raise TrajectoryFileError(f"{located}: field 'kind' is {record['kind']!r}; expected one of {', '.join(PROMPT_KINDS)}")
    if record.get("completion_ids") is not None:
        check_token_ids(record["completion_ids"], located, "completion_ids", error=TrajectoryFileError)


def check_trajectory_tokens(records: list[dict[str, Any]], path, tokenizer, vocab_size: int | None = None) -> None:
    """Every record against the policy `tokenizer`: completion_ids below `vocab_size` (the policy
    model's embedding rows where known, which may exceed the tokenizer's size: a model pads its
    vocabulary and its sampler can draw those ids; default the tokenizer's size) and decoding to
    the record's reasoning, or a reasoning the tokenizer decodes back to itself (module docstring)."""
    vocab_size = len(tokenizer) if vocab_size is None else vocab_size
    for record in records:
        _check_tokens(record, _located(record, path), tokenizer, vocab_size)


def _check_tokens(record: dict[str, Any], located: str, tokenizer, vocab_size: int) -> None:
    ids = record.get("completion_ids")
    if ids is not None:
        check_token_ids(ids, located, "completion_ids", vocab_size=vocab_size, error=TrajectoryFileError)
        text = _decode(tokenizer, ids)
        start, end, _ = reasoning_span(text)
        if text[start:end] != record["reasoning"]:
            raise TrajectoryFileError(
                f"{located}: field 'completion_ids' does not decode to the record's reasoning: the reasoning of their "
                f"decode is {_clip(text[start:end])!r}, field 'reasoning' is {_clip(record['reasoning'])!r} (drop "
                "completion_ids to tokenise the reasoning text instead)")
        return
    messages = prompt_messages(record)
    head = "" if render_prompt(tokenizer, messages).rstrip().endswith(THINK_OPEN) else THINK_OPEN + "\n"
    text = _decode(tokenizer, encode_text(tokenizer, head + record["reasoning"]))
    if text != head + record["reasoning"]:
        raise TrajectoryFileError(
            f"{located}: field 'reasoning' does not survive the policy tokenizer ({_clip(text)!r} decoded from "
            f"{_clip(head + record['reasoning'])!r}), so csr cannot place sentence ends on token boundaries")


def read_trajectories(path: str | Path, *, kind: str = "") -> list[dict[str, Any]]:
    """The records of `path` of `kind` ('' = every kind), every record of the file checked
    (`check_trajectory_fields`) whatever its kind; a file with no record of `kind` is an error."""
    if kind and kind not in PROMPT_KINDS:
        raise TrajectoryFileError(f"config.csr.kind is {kind!r}; expected one of {', '.join(PROMPT_KINDS)} or ''")
    records = read_jsonl_records(path, REQUIRED_FIELDS, kind="trajectory", error=TrajectoryFileError)
    for record in records:
        check_trajectory_fields(record, path)
    chosen = [r for r in records if not kind or r.get("kind", "harmful") == kind]
    if not chosen:
        found = sorted({r.get("kind", "harmful") for r in records})
        raise TrajectoryFileError(f"{path}: no trajectory of kind {kind!r} (config.csr.kind) among its {len(records)} "
                                  f"records (kinds: {', '.join(found)}); set config.csr.kind='' for all")
    return chosen


__all__ = ["REQUIRED_FIELDS", "SAFE_ID", "TrajectoryFileError", "check_trajectory_fields", "check_trajectory_tokens",
           "read_trajectories"]
