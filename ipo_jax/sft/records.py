"""Chat datasets for SFT: reading records from JSONL files and `datasets` sources, and checking
each into a conversation whose assistant turns carry the loss.

A record is either
  messages         a list of {role, content} (roles system / user / assistant; at least one user
                   turn; the last message the assistant's; every assistant content non-blank). An
                   assistant content may hold its reasoning, `<think>...</think>answer`.
or
  prompt + response  the user's message (a string, or chat messages) and the assistant's reply
                   (a non-blank string, reasoning included), with an optional `system` string:
                   STAR-1 publishes `question` / `response` (with `id`, `category`, `source`,
                   `score`); RealSafe-R1's trajectories are `prompt` / `response` records.
plus an optional `id` (a string or integer; a record without one gets `<source name>:<row>`).
Other fields are ignored.

Columns: `fields` ("prompt=question,response=answer") names a column per field; a field it leaves
out is read from the first of its default columns (DEFAULT_COLUMNS) that the record has, so the
STAR-1 and RealSafe-R1 layouts need no mapping. `format` 'auto' takes `messages` when the record
has them, else prompt + response.

Sources (data.dataset, comma-separated): a `.jsonl` file (read line by line: an error names
file:line), a `.parquet` or `.arrow` file, a directory written by `datasets` save_to_disk (or of
data files in the hub's layout), or a hub id `owner/name` -- the last only when the hub is
reachable (HF_HUB_OFFLINE / HF_DATASETS_OFFLINE make it an error saying to download it). A row of
a `datasets` source is named `<source> row <n>`. Every problem is an `SftRecordError` (a
ValueError: the CLI exits 2) in one line naming the place and the field; ids must be unique
across all sources (a repeat names both places).
"""

from __future__ import annotations

import dataclasses
import os
import re
from pathlib import Path
from typing import Any, Iterator

from ipo_jax.data.prompts import parse_field_mapping
from ipo_jax.data.records import RecordFileError, check_chat_messages, read_jsonl_records

RECORD_FORMATS = ("auto", "messages", "prompt_response")
FIELD_NAMES = ("messages", "prompt", "response", "system", "id")
DEFAULT_COLUMNS: dict[str, tuple[str, ...]] = {
    "messages": ("messages",),
    "prompt": ("prompt", "question", "instruction"),
    "response": ("response", "output", "completion"),
    "system": ("system",),
    "id": ("id",),
}
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


class SftRecordError(RecordFileError):
    """A chat dataset has a malformed record or a bad field mapping; the message says where."""


@dataclasses.dataclass(frozen=True)
class SftRecord:
    id: str
    messages: list[dict[str, str]]
    where: str  # file:line, or '<source> row <n>'


def parse_fields(spec: str) -> dict[str, str]:
    """"prompt=question,response=answer" -> {"prompt": "question", "response": "answer"}."""
    return parse_field_mapping(spec, FIELD_NAMES, setting="data.fields", error=SftRecordError)


def read_sft_records(spec: str, *, split: str = "train", fmt: str = "auto", fields: str = "") -> list[SftRecord]:
    """Every record of the comma-separated sources in `spec`, checked (see the module doc)."""
    if fmt not in RECORD_FORMATS:
        raise SftRecordError(f"data.format {fmt!r}: expected one of {', '.join(RECORD_FORMATS)}")
    mapping = parse_fields(fields)
    sources = [s.strip() for s in str(spec).split(",") if s.strip()]
    if not sources:
        raise SftRecordError("data.dataset is empty: give a .jsonl / .parquet / .arrow file, a dataset directory or a hub id")
    records, seen = [], {}
    for source in sources:
        for index, (where, row) in enumerate(_rows(source, split)):
            record = to_record(row, where, fmt, mapping, default_id=f"{Path(source).name}:{index}")
            if record.id in seen:
                raise SftRecordError(f"{where}: id {record.id!r} repeats {seen[record.id]}")
            seen[record.id] = where
            records.append(record)
    return records


def _rows(source: str, split: str) -> Iterator[tuple[str, dict[str, Any]]]:
    path = Path(source)
    if path.suffix.lower() == ".jsonl":
        for row in read_jsonl_records(path, {}, kind="chat", error=SftRecordError, chat_fields=()):
            yield f"{path}:{row['_line']}", row
        return
    dataset = _open_dataset(source, split)
    if len(dataset) == 0:
        raise SftRecordError(f"{source}: no records")
    for index, row in enumerate(dataset):
        yield f"{source} row {index}", row


def _open_dataset(source: str, split: str):
    """The `datasets.Dataset` behind a source that is not a .jsonl file (module doc)."""
    import datasets

    path = Path(source)
    if path.is_dir():
        if any((path / name).is_file() for name in ("dataset_info.json", "dataset_dict.json", "state.json")):
            return _split(datasets.load_from_disk(str(path)), source, split)
        return _split(datasets.load_dataset(str(path), split=split), source, split)
    if path.is_file():
        if path.suffix.lower() == ".parquet":
            import pyarrow.parquet

            return datasets.Dataset(pyarrow.parquet.read_table(path))  # in memory: no cache files written
        if path.suffix.lower() == ".arrow":
            return datasets.Dataset.from_file(str(path))
        raise SftRecordError(f"{source}: unknown file type {path.suffix!r}; expected .jsonl, .parquet, .arrow or a "
                             "dataset directory")
    if not _HUB_ID.match(source) or path.suffix.lower() in (".parquet", ".arrow", ".json", ".jsonl"):
        raise FileNotFoundError(f"data.dataset {source!r}: no such file or directory (nor a hub dataset id owner/name)")
    if any(os.environ.get(v, "").strip().lower() in ("1", "true", "yes", "on") for v in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")):
        raise SftRecordError(f"data.dataset {source!r}: not a local file or directory, and the Hugging Face hub is offline "
                             "(HF_HUB_OFFLINE / HF_DATASETS_OFFLINE); download it (save_to_disk or its parquet files) "
                             "and give the local path")
    try:
        return datasets.load_dataset(source, split=split)
    except Exception as e:  # noqa: BLE001 - any hub failure becomes one clear line
        raise SftRecordError(f"data.dataset {source!r}: could not load it from the hub ({type(e).__name__}: {e})") from None


def _split(data, source: str, split: str):
    import datasets

    if isinstance(data, (datasets.DatasetDict, dict)):
        if split not in data:
            raise SftRecordError(f"{source}: no split {split!r}; it has {', '.join(data)} (set data.split)")
        return data[split]
    return data


def _column(row: dict, field: str, mapping: dict[str, str]) -> str | None:
    """The column `field` is read from in `row`: the mapped one, or the first default it has."""
    if field in mapping:
        return mapping[field]
    return next((c for c in DEFAULT_COLUMNS[field] if row.get(c) is not None), None)


def to_record(row: dict[str, Any], where: str, fmt: str, mapping: dict[str, str], default_id: str) -> SftRecord:
    """One row checked into an SftRecord (module doc); any problem is an SftRecordError naming `where`."""
    id_column = _column(row, "id", mapping)
    identifier = row.get(id_column) if id_column else None
    if "id" in mapping and mapping["id"] not in row:
        raise SftRecordError(f"{where}: field {id_column!r} (data.fields id) is missing")
    if identifier is None:
        identifier = default_id
    elif isinstance(identifier, bool) or not isinstance(identifier, (str, int)) or not str(identifier).strip():
        raise SftRecordError(f"{where}: field {id_column!r} should be a non-empty string or integer, got {identifier!r}")
    located = f"{where} (id {str(identifier)!r})"
    messages_column = _column(row, "messages", mapping)
    if fmt == "messages" or (fmt == "auto" and messages_column is not None and row.get(messages_column) is not None):
        messages = _messages(row, messages_column or "messages", located)
    else:
        messages = _prompt_response(row, mapping, located)
    return SftRecord(str(identifier), messages, where)


def _messages(row: dict, column: str, located: str) -> list[dict[str, str]]:
    if row.get(column) is None:
        raise SftRecordError(f"{located}: field {column!r} is missing (data.format messages)")
    messages = check_chat_messages(row[column], located, field=column, error=SftRecordError)
    messages = [{"role": m["role"], "content": m["content"]} for m in messages]
    if messages[-1]["role"] != "assistant":
        raise SftRecordError(f"{located}: field {column!r} ends with a {messages[-1]['role']} message; the last message "
                             "must be the assistant's (a trailing turn would carry no loss)")
    for i, m in enumerate(messages):
        if m["role"] == "assistant" and not m["content"].strip():
            raise SftRecordError(f"{located}: field {column!r} message {i} (assistant) is empty")
    return messages


def _prompt_response(row: dict, mapping: dict[str, str], located: str) -> list[dict[str, str]]:
    columns = {field: _column(row, field, mapping) for field in ("prompt", "response", "system")}
    for field in ("prompt", "response"):
        column = columns[field]
        if column is None or row.get(column) is None:
            looked = column if field in mapping else " / ".join(DEFAULT_COLUMNS[field])
            raise SftRecordError(f"{located}: field {field!r} is missing (looked for {looked}; has "
                                 f"{', '.join(k for k in row if not k.startswith('_'))}); name it with "
                                 f"data.fields='{field}=<column>'")
    prompt, response = row[columns["prompt"]], row[columns["response"]]
    if isinstance(prompt, str):
        if not prompt.strip():
            raise SftRecordError(f"{located}: field {columns['prompt']!r} is empty")
        messages = [{"role": "user", "content": prompt}]
    else:
        messages = check_chat_messages(prompt, located, field=columns["prompt"], error=SftRecordError)
        messages = [{"role": m["role"], "content": m["content"]} for m in messages]
    if not isinstance(response, str):
        raise SftRecordError(f"{located}: field {columns['response']!r} should be a string, got {type(response).__name__}")
    if not response.strip():
        raise SftRecordError(f"{located}: field {columns['response']!r} is empty")
    system = row.get(columns["system"]) if columns["system"] else None
    if system is not None and not isinstance(system, str):
        raise SftRecordError(f"{located}: field {columns['system']!r} should be a string, got {type(system).__name__}")
    if system:
        messages.insert(0, {"role": "system", "content": system})
    return [*messages, {"role": "assistant", "content": response}]
