"""Reading JSONL record files with validation: every problem names file, line and field."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Mapping


class RecordFileError(ValueError):
    """A record file has a malformed line; the message names file, line and field."""


def read_jsonl_records(
    path: str | Path,
    required: Mapping[str, type | tuple[type, ...]],
    *,
    non_empty: tuple[str, ...] = (),
    kind: str = "record",
    error: type[RecordFileError] = RecordFileError,
) -> list[dict[str, Any]]:
    """Parse a JSONL file: objects only, required fields of the right type, `non_empty` fields
    not blank, unique `id`s. Blank lines are allowed; an empty file is an error."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{kind} file {path} not found")
    records, seen = [], {}
    with path.open(encoding="utf-8") as f:
        for line_no, line in enumerate(f, 1):
            if not line.strip():
                continue
            where = f"{path}:{line_no}"
            try:
                record = json.loads(line)
            except json.JSONDecodeError as e:
                raise error(f"{where}: not valid JSON ({e.msg} at column {e.colno})") from None
            if not isinstance(record, dict):
                raise error(f"{where}: expected a JSON object, got {type(record).__name__}")
            for field, types in required.items():
                if field not in record:
                    raise error(f"{where}: field {field!r} is missing")
                if not isinstance(record[field], types):
                    expected = " or ".join(t.__name__ for t in (types if isinstance(types, tuple) else (types,)))
                    raise error(f"{where}: field {field!r} should be {expected}, got {type(record[field]).__name__}")
            for field in non_empty:
                value = record[field]
                if not value or (isinstance(value, str) and not value.strip()):
                    raise error(f"{where} (id {record.get('id')!r}): field {field!r} is empty")
            if "id" in record:
                if record["id"] in seen:
                    raise error(f"{where}: id {record['id']!r} repeats line {seen[record['id']]}")
                seen[record["id"]] = line_no
            record["_line"] = line_no
            records.append(record)
    if not records:
        raise error(f"{path}: no {kind} records")
    return records
