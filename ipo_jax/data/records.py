"""Reading JSONL record files with validation: every problem names file, line and field.

Owns the checks every record file shares (pairs, prompts, trajectories, training prompts):
  - each line valid UTF-8 and one JSON object; required fields present with the right type;
  - `id` (when required) a non-empty string, unique in the file;
  - chat messages (`check_chat_messages`): a list of {role, content} objects, role one of
    system / user / assistant, content a string, at least one user turn;
  - the path is an existing file (a directory is reported as such, not as "not found");
  - strict JSON numbers (`parse_json_line`): NaN / Infinity literals and floats that overflow to
    infinity (1e999) are errors, as are integers of more than 4300 digits and nesting deeper
    than Python's recursion limit -- each naming file and line;
  - lines are read one at a time and at most `MAX_LINE_BYTES` (64 MiB) long, so a file with one
    enormous line is an error naming the line and the limit instead of a multi-gigabyte read;
  - token ids (`check_token_ids`): a list of integers in [0, vocabulary size), or in [0, 2**31)
    (the int32 arrays every stage feeds the model) when the vocabulary is not known yet.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Mapping, Sequence

CHAT_ROLES = ("system", "user", "assistant")
MAX_LINE_BYTES = 64 * 2**20  # one record (one JSONL line); the longest real ones (a 32k-token trajectory) are < 1 MiB
TOKEN_ID_LIMIT = 2**31  # token ids become int32 arrays; a larger one is no token of any vocabulary


class RecordFileError(ValueError):
    """A record file has a malformed line; the message names file, line and field."""


def check_chat_messages(
    messages: Any, where: str, *, field: str = "prompt", error: type[ValueError] = RecordFileError
) -> list[dict[str, Any]]:
    """Validate chat messages and return them (as plain dicts).

    `messages` must be a non-empty list of objects, each with `role` in CHAT_ROLES and string
    `content`, with at least one user turn. `where` locates the messages for the error message
    (for example "pairs.jsonl:7 (id 'x')"); `field` names them. Raises `error` with one line.
    """
    if not isinstance(messages, (list, tuple)):
        raise error(f"{where}: field {field!r} should be a list of chat messages, got {type(messages).__name__}")
    if not messages:
        raise error(f"{where}: field {field!r} is an empty list of chat messages")
    checked = []
    for i, message in enumerate(messages):
        at = f"{where}: field {field!r} message {i}"
        if not isinstance(message, Mapping):
            raise error(f"{at} should be an object {{\"role\": ..., \"content\": ...}}, got {type(message).__name__} {_short(message)}")
        if "role" not in message:
            raise error(f"{at} has no 'role'; expected one of {', '.join(CHAT_ROLES)}")
        if message["role"] not in CHAT_ROLES:
            raise error(f"{at} has role {_short(message['role'])}; expected one of {', '.join(CHAT_ROLES)}")
        if "content" not in message:
            raise error(f"{at} has no 'content'")
        if not isinstance(message["content"], str):
            raise error(f"{at} has content of type {type(message['content']).__name__}; expected a string")
        checked.append(dict(message))
    if not any(m["role"] == "user" for m in checked):
        raise error(f"{where}: field {field!r} has no user message (roles: {', '.join(m['role'] for m in checked)})")
    return checked


def check_prompt_field(value: Any, where: str, *, field: str = "prompt", error: type[ValueError] = RecordFileError) -> None:
    """A prompt is a non-blank string (one user turn) or chat messages (see check_chat_messages)."""
    if isinstance(value, str):
        if not value.strip():
            raise error(f"{where}: field {field!r} is empty")
        return
    check_chat_messages(value, where, field=field, error=error)


def check_input_file(path: str | Path, kind: str = "input") -> Path:
    """An existing regular file, or FileNotFoundError / IsADirectoryError naming it."""
    path = Path(path)
    if not str(path).strip():
        raise FileNotFoundError(f"no {kind} file given (empty path)")
    if path.is_dir():
        raise IsADirectoryError(f"{kind} file {path} is a directory; expected a file")
    if not path.exists():
        raise FileNotFoundError(f"{kind} file {path} not found")
    if not path.is_file():
        raise FileNotFoundError(f"{kind} file {path} is not a regular file")
    return path


def _short(value: Any, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def iter_jsonl_lines(path: Path, error: type[ValueError] = RecordFileError, *, max_line_bytes: int | None = None):
    """(line number, decoded text) for every line, read one line at a time; invalid UTF-8, or a
    line longer than `max_line_bytes` (default MAX_LINE_BYTES), is an error naming file and line."""
    max_line_bytes = max_line_bytes or MAX_LINE_BYTES
    with path.open("rb") as f:
        line_no = 0
        while raw := f.readline(max_line_bytes + 1):
            line_no += 1
            if len(raw) > max_line_bytes:  # never read the rest: the limit is what keeps memory bounded
                raise error(f"{path}:{line_no}: line longer than {byte_size_text(max_line_bytes)}, the limit for one record; "
                            "expected one JSON object per line")
            try:
                yield line_no, raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise error(
                    f"{path}:{line_no}: not valid UTF-8 (byte 0x{raw[e.start]:02x} at byte {e.start + 1} of the line)"
                ) from None


def byte_size_text(n: int) -> str:
    """64 MiB, or 100 bytes."""
    return f"{n // 2**20} MiB" if n >= 2**20 and n % 2**20 == 0 else f"{n} bytes"


def _no_constant(name: str):
    raise ValueError(f"{name} is not a JSON number; expected a finite number")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        shown = text if len(text) <= 40 else text[:37] + "..."
        raise ValueError(f"{shown} is too large for a number (it overflows to infinity); expected a finite number")
    return value


STRICT_NUMBERS = {"parse_constant": _no_constant, "parse_float": _finite_float}  # json.loads hooks: finite numbers only


def parse_json_line(line: str, where: str, error: type[ValueError] = RecordFileError) -> Any:
    """One JSON document, strictly: NaN / Infinity and overflowing floats refused; any problem is
    `error` naming `where` (e.g. "pairs.jsonl:7")."""
    try:
        return json.loads(line, **STRICT_NUMBERS)
    except json.JSONDecodeError as e:
        raise error(f"{where}: not valid JSON ({e.msg} at column {e.colno})") from None
    except RecursionError:
        raise error(f"{where}: not valid JSON here (nested too deeply)") from None
    except ValueError as e:  # the number hooks above; an integer over Python's digit limit
        reason = "an integer of more than 4300 digits" if "integer string conversion" in str(e) else str(e)
        raise error(f"{where}: not valid JSON here ({reason})") from None


def check_token_ids(ids: Any, where: str, field: str, *, vocab_size: int | None = None, non_empty: bool = False,
                    error: type[ValueError] = RecordFileError) -> list[int]:
    """`ids` as a list of token ids: integers in [0, vocab_size) (in [0, 2**31) when the vocabulary
    is not known yet); else `error` naming `where`, the field, the item and what is accepted."""
    if not isinstance(ids, list):
        raise error(f"{where}: field {field!r} should be a list of token ids, got {type(ids).__name__}")
    if non_empty and not ids:
        raise error(f"{where}: field {field!r} is empty")
    limit = TOKEN_ID_LIMIT if vocab_size is None else min(int(vocab_size), TOKEN_ID_LIMIT)
    for i, value in enumerate(ids):
        if isinstance(value, bool) or not isinstance(value, int):
            raise error(f"{where}: field {field!r} item {i} should be an integer token id, got {_short(value)}")
        if not 0 <= value < limit:
            accepted = f"the tokenizer's {limit} ids (0..{limit - 1})" if vocab_size is not None else \
                f"0..{limit - 1} (token ids are int32)"
            raise error(f"{where}: field {field!r} item {i} is token id {_short(value)}, outside {accepted}")
    return ids


def read_jsonl_records(
    path: str | Path,
    required: Mapping[str, type | tuple[type, ...]],
    *,
    non_empty: tuple[str, ...] = (),
    kind: str = "record",
    error: type[RecordFileError] = RecordFileError,
    chat_fields: Sequence[str] = ("prompt",),
) -> list[dict[str, Any]]:
    """Parse a JSONL file: objects only, required fields of the right type, `non_empty` fields
    not blank, `id`s non-empty and unique, `chat_fields` (when present) a prompt string or valid
    chat messages, `system` (when present) a string. Blank lines are allowed; an empty file is
    an error."""
    path = check_input_file(path, kind)
    records, seen = [], {}
    for line_no, line in iter_jsonl_lines(path, error):
        if not line.strip():
            continue
        where = f"{path}:{line_no}"
        record = parse_json_line(line, where, error)
        if not isinstance(record, dict):
            raise error(f"{where}: expected a JSON object, got {type(record).__name__}")
        for field, types in required.items():
            if field not in record:
                raise error(f"{where}: field {field!r} is missing")
            if not isinstance(record[field], types) or (isinstance(record[field], bool) and bool not in _as_tuple(types)):
                expected = " or ".join(t.__name__ for t in _as_tuple(types))
                raise error(f"{where}: field {field!r} should be {expected}, got {type(record[field]).__name__}")
        if "id" in record:
            identifier = record["id"]
            if isinstance(identifier, bool) or not isinstance(identifier, (str, int)) or not str(identifier).strip():
                raise error(f"{where}: field 'id' should be a non-empty string, got {_short(identifier)}")
            if record["id"] in seen:
                raise error(f"{where}: id {record['id']!r} repeats line {seen[record['id']]}")
            seen[record["id"]] = line_no
        located = f"{where} (id {record['id']!r})" if "id" in record else where
        for field in non_empty:
            value = record[field]
            if not value or (isinstance(value, str) and not value.strip()):
                raise error(f"{located}: field {field!r} is empty")
        for field in chat_fields:
            if field in record:
                check_prompt_field(record[field], located, field=field, error=error)
        if record.get("system") is not None and not isinstance(record["system"], str):
            raise error(f"{located}: field 'system' should be a string, got {type(record['system']).__name__}")
        record["_line"] = line_no
        records.append(record)
    if not records:
        raise error(f"{path}: no {kind} records")
    return records


def _as_tuple(types: type | tuple[type, ...]) -> tuple[type, ...]:
    return types if isinstance(types, tuple) else (types,)
