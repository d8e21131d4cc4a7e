"""Prompt sets for the pipeline (`sample`, `build-pairs`) and anything else that reads prompts:
one loader for JSONL files and for `datasets` sources, with a field mapping.

`load_prompt_records(source, fields=..., split=..., kind=...)` returns records
``{"id": str, "prompt": str | chat messages, "kind": "harmful" | "benign", ["system": str]}``
plus, for JSONL, ``_line`` (the line number).

Sources, tried in this order:
  * a ``.jsonl`` file: one JSON object per line (the original format; every field of a line is
    kept, so a resumed run sees the same records);
  * a ``.parquet`` file, an ``.arrow`` file, or a directory: a `datasets.save_to_disk` directory
    (`datasets.load_from_disk`) or a directory of data files in the hub's layout
    (`datasets.load_dataset(dir)`); `split` picks the split when there are several;
  * anything else that looks like ``owner/name`` and is not a local path: a Hugging Face hub
    dataset (`datasets.load_dataset(id, split=split)`), only when the hub is reachable: with
    ``HF_HUB_OFFLINE=1`` or ``HF_DATASETS_OFFLINE=1`` it is an error saying so.
From a `datasets` source only the mapped fields are kept (a STAR-1 row also holds a long
``response`` that no stage needs).

Field mapping (`fields`, e.g. ``"prompt=question,id=id,kind=kind"``): ``<field>=<column>`` pairs
for the fields ``prompt``, ``id``, ``kind`` and ``system``. A field the mapping leaves out is
read from the first column of its default list that exists: prompt <- ``prompt``, ``question``
(STAR-1, STAR-benign-915), ``messages``; id <- ``id``; kind <- ``kind``; system <- ``system``.
So the published STAR-1 (columns id, question, response, category, source) and STAR-benign-915
(id, question, response, source) layouts load without a mapping. A record without a kind gets
`kind` (STAR-benign-915 is read with ``kind="benign"``); a `datasets` row without an id gets its
row number. Ids are strings (an integer id column is converted) and must be unique.

Bad input is a `PromptFileError` (a ValueError: the CLI exits 2) naming the file and line, or
the source and row, or the column: a mapping naming a column the source lacks (with the columns
it has), a prompt that is neither a non-blank string nor valid chat messages (a user turn, known
roles: `ipo_jax.data.records.check_chat_messages`), an unknown kind, a repeated id. Everything
is checked when the prompts are read, before any model is loaded or any token sampled.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, Iterable

from ipo_jax.data.records import RecordFileError, check_prompt_field, read_jsonl_records

PROMPT_KINDS = ("harmful", "benign")
PROMPT_FIELDS = ("prompt", "id", "kind", "system")
DEFAULT_COLUMNS: dict[str, tuple[str, ...]] = {
    "prompt": ("prompt", "question", "messages"),
    "id": ("id",),
    "kind": ("kind",),
    "system": ("system",),
}
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
_DATA_SUFFIXES = (".parquet", ".arrow")


class PromptFileError(RecordFileError):
    """A prompt source has a malformed record or a bad field mapping; the message says where."""


def parse_field_mapping(spec: str, fields=PROMPT_FIELDS, *, setting: str = "prompts_fields",
                        error: type[ValueError] = PromptFileError) -> dict[str, str]:
    """``"prompt=question,id=id"`` -> ``{"prompt": "question", "id": "id"}`` for the record `fields`
    a reader knows (the prompt sets', the SFT datasets'); errors name the setting and the part."""
    mapping: dict[str, str] = {}
    for part in (p.strip() for p in (spec or "").split(",")):
        if not part:
            continue
        field, sep, column = (s.strip() for s in part.partition("="))
        if not sep or not field or not column:
            raise error(f"{setting} {spec!r}: {part!r} should be <field>=<column>")
        if field not in fields:
            raise error(f"{setting} {spec!r}: unknown field {field!r}; expected one of {', '.join(fields)}")
        if field in mapping:
            raise error(f"{setting} {spec!r}: field {field!r} is mapped twice")
        mapping[field] = column
    return mapping


def _hub_offline() -> bool:
    return any(os.environ.get(v, "").strip().lower() in ("1", "true", "yes", "on") for v in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"))


def _choose_split(data, source: str, split: str):
    """A Dataset from what `datasets` returned (a Dataset, or a DatasetDict keyed by split)."""
    import datasets

    if isinstance(data, (datasets.DatasetDict, dict)):
        if split not in data:
            raise PromptFileError(f"prompts {source}: no split {split!r}; it has {', '.join(data)} (set prompts_split)")
        return data[split]
    return data


def _open_dataset(source: str, split: str):
    """The `datasets.Dataset` behind a non-JSONL source (see the module docstring)."""
    import datasets

    path = Path(source)
    if path.is_dir():
        if (path / "dataset_info.json").is_file() or (path / "dataset_dict.json").is_file() or (path / "state.json").is_file():
            return _choose_split(datasets.load_from_disk(str(path)), source, split)
        return datasets.load_dataset(str(path), split=split)
    if path.is_file():
        suffix = path.suffix.lower()
        if suffix == ".parquet":
            import pyarrow.parquet

            return datasets.Dataset(pyarrow.parquet.read_table(path))  # in memory: no cache files written
        if suffix == ".arrow":
            return datasets.Dataset.from_file(str(path))
        raise PromptFileError(f"prompts {source}: unknown file type {path.suffix!r}; expected .jsonl, .parquet, .arrow or a dataset directory")
    if not _HUB_ID.match(source):
        raise FileNotFoundError(f"prompts {source!r}: no such file or directory (nor a hub dataset id like owner/name)")
    if _hub_offline():
        raise PromptFileError(
            f"prompts {source!r}: not a local file or directory, and the Hugging Face hub is offline "
            "(HF_HUB_OFFLINE / HF_DATASETS_OFFLINE set); download it (datasets save_to_disk or the parquet files) "
            "and give the local path"
        )
    try:
        return datasets.load_dataset(source, split=split)
    except Exception as e:  # noqa: BLE001 - any hub failure becomes one clear line
        raise PromptFileError(f"prompts {source!r}: could not load it from the Hugging Face hub ({type(e).__name__}: {e})") from None


def _resolve_columns(mapping: dict[str, str], columns: Iterable[str], source: str, spec: str) -> dict[str, str | None]:
    """field -> column for a source with these columns; a mapped column that is absent is an error."""
    columns = list(columns)
    resolved: dict[str, str | None] = {}
    for field in PROMPT_FIELDS:
        if field in mapping:
            if mapping[field] not in columns:
                raise PromptFileError(
                    f"prompts {source}: column {mapping[field]!r} (prompts_fields {spec!r}, field {field!r}) not found; "
                    f"columns: {', '.join(columns)}"
                )
            resolved[field] = mapping[field]
        else:
            resolved[field] = next((c for c in DEFAULT_COLUMNS[field] if c in columns), None)
    if resolved["prompt"] is None:
        raise PromptFileError(
            f"prompts {source}: no prompt column (looked for {', '.join(DEFAULT_COLUMNS['prompt'])}); "
            f"columns: {', '.join(columns)}; name it with prompts_fields='prompt=<column>'"
        )
    return resolved


def _finish(record: dict[str, Any], where: str, default_kind: str) -> dict[str, Any]:
    """Validate one mapped record in place (prompt, kind, system) and return it."""
    located = f"{where} (id {record['id']!r})"
    check_prompt_field(record.get("prompt"), located, error=PromptFileError)
    if isinstance(record["prompt"], (list, tuple)):
        record["prompt"] = [dict(m) for m in record["prompt"]]
    if record.get("kind") is None:
        record["kind"] = default_kind
    if record["kind"] not in PROMPT_KINDS:
        raise PromptFileError(f"{located}: field 'kind' is {record['kind']!r}; expected one of {PROMPT_KINDS}")
    if record.get("system") is not None and not isinstance(record["system"], str):
        raise PromptFileError(f"{located}: field 'system' should be a string, got {type(record['system']).__name__}")
    return record


def _check_id(value: Any, where: str) -> str:
    if isinstance(value, bool) or not isinstance(value, (str, int)) or not str(value).strip():
        raise PromptFileError(f"{where}: field 'id' should be a non-empty string or integer, got {value!r}")
    return str(value)


def _from_jsonl(path: Path, mapping: dict[str, str], spec: str, default_kind: str) -> list[dict[str, Any]]:
    raw = read_jsonl_records(path, {}, kind="prompt", error=PromptFileError, chat_fields=())
    records, seen = [], {}
    for row in raw:
        where = f"{path}:{row['_line']}"
        for field, column in mapping.items():
            if column not in row:
                raise PromptFileError(f"{where}: column {column!r} (prompts_fields {spec!r}, field {field!r}) is missing")
        prompt_column = mapping.get("prompt") or next((c for c in DEFAULT_COLUMNS["prompt"] if c in row), None)
        if prompt_column is None:
            raise PromptFileError(f"{where}: field 'prompt' is missing")
        id_column = mapping.get("id", "id")
        if id_column not in row:
            raise PromptFileError(f"{where}: field 'id' is missing")
        record = dict(row)  # a JSONL line keeps all its fields (the run manifest hashes them)
        record["id"] = _check_id(row[id_column], where)
        record["prompt"] = row[prompt_column]
        for field in ("kind", "system"):
            if field in mapping:
                record[field] = row[mapping[field]]
        if record["id"] in seen:
            raise PromptFileError(f"{where}: id {record['id']!r} repeats line {seen[record['id']]}")
        seen[record["id"]] = row["_line"]
        records.append(_finish(record, where, default_kind))
    return records


def _from_dataset(dataset, source: str, mapping: dict[str, str], spec: str, default_kind: str) -> list[dict[str, Any]]:
    columns = _resolve_columns(mapping, dataset.column_names, source, spec)
    records, seen = [], {}
    for index, row in enumerate(dataset):
        where = f"{source} row {index}"
        record: dict[str, Any] = {
            "id": _check_id(row[columns["id"]], where) if columns["id"] else str(index),
            "prompt": row[columns["prompt"]],
        }
        for field in ("kind", "system"):
            if columns[field] is not None and row[columns[field]] is not None:
                record[field] = row[columns[field]]
        if record["id"] in seen:
            raise PromptFileError(f"{where}: id {record['id']!r} repeats row {seen[record['id']]}")
        seen[record["id"]] = index
        records.append(_finish(record, where, default_kind))
    if not records:
        raise PromptFileError(f"prompts {source}: no prompt records")
    return records


def load_prompt_records(
    source: str | os.PathLike[str], *, fields: str = "", split: str = "train", kind: str = "harmful"
) -> list[dict[str, Any]]:
    """Read and validate a prompt set (sources, mapping and errors: module docstring)."""
    if kind not in PROMPT_KINDS:
        raise PromptFileError(f"prompts_kind {kind!r}: expected one of {PROMPT_KINDS}")
    mapping = parse_field_mapping(fields)
    text = str(source).strip()
    if not text:
        raise PromptFileError("no prompts given (empty path): give a JSONL file, a dataset directory or file, or a hub id")
    path = Path(text)
    if path.suffix.lower() == ".jsonl" or (path.is_file() and path.suffix.lower() not in _DATA_SUFFIXES):
        return _from_jsonl(path, mapping, fields, kind)
    return _from_dataset(_open_dataset(text, split), text, mapping, fields, kind)


def prompt_records_from_config(config) -> list[dict[str, Any]]:
    """`load_prompt_records` with a stage config's prompts, prompts_fields, prompts_split, prompts_kind."""
    return load_prompt_records(
        config.prompts,
        fields=config.get("prompts_fields", ""),
        split=config.get("prompts_split", "train"),
        kind=config.get("prompts_kind", "harmful"),
    )


__all__ = [
    "DEFAULT_COLUMNS", "PROMPT_FIELDS", "PROMPT_KINDS", "PromptFileError", "load_prompt_records",
    "parse_field_mapping", "prompt_records_from_config",
]
