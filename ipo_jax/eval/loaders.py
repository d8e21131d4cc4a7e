"""Benchmark loaders: the published layouts of the paper's evaluation sets turned into `EvalItem`s.

    load_benchmark(name, path, limit=None, split=None, *, sample=None, seed=0) -> list[EvalItem]

Benchmark: published file(s) / hub id -> columns read -> kind
  jailbreakbench: JBB-Behaviors harmful-behaviors.csv, benign-behaviors.csv; hf:JailbreakBench/JBB-Behaviors
                  (config behaviors, splits harmful / benign) -> Index, Goal, Category -> harmful (benign for the
                  benign file or split)
  strongreject:   strongreject_dataset.csv, strongreject_small_dataset.csv -> forbidden_prompt, category -> harmful
  wildjailbreak:  eval.tsv (adversarial, label, data_type), train.tsv; hf:allenai/wildjailbreak (config eval)
                  -> adversarial (else vanilla), data_type (else label) -> harmful / benign; `sample=N` draws from
                  the adversarial_harmful rows
  xstest:         xstest_prompts.csv (id, prompt, type, label, focus, note) -> id, prompt, type, label
                  -> label safe: benign, unsafe: harmful; category = type
  aime:           Maxwell-Jia/AIME_2024 aime_2024_problems.parquet (ID, Problem, Solution, Answer);
                  AI-MO/aimo-validation-aime, HuggingFaceH4/aime_2024, yentinglin/aime_2025 (id, problem, answer);
                  opencompass/AIME2025 aime2025-I.jsonl + aime2025-II.jsonl (question, answer)
                  -> math, reference = the answer as published (an integer column reads as its digits)
  math500:        HuggingFaceH4/MATH-500 test.jsonl -> unique_id, problem, answer, subject -> math
  gpqa:           Idavidrein/gpqa gpqa_diamond.csv (gpqa_main.csv etc. as a file path) -> Record ID, Question,
                  Correct Answer, Incorrect Answer 1..3, High-level domain -> choice: the options shuffled per item
                  (seeded), reference = the letter of the correct answer
  humaneval:      openai/human-eval HumanEval.jsonl(.gz); hf:openai/openai_humaneval -> task_id, prompt, test,
                  entry_point -> code (prompt and test kept byte for byte)
  jsonl:          our own: id, prompt, kind, reference, category, choices (choice), tests + entry_point (code)

`path` is one of
  * the file itself: .csv, .tsv, .json, .jsonl, .jsonl.gz or .parquet;
  * a directory holding one of the published file names (jailbreakbench: `split="benign"` picks
    benign-behaviors.csv; aime: the aime* published files there -- aime_2024_problems.parquet,
    aime2025-I.jsonl, aime2025-II.jsonl, aime2024.jsonl, aime2025.jsonl -- read as one benchmark,
    only those of the `years` given (the year in the file name: ``years="2024"`` reads the 2024
    file alone, ``"2024,2025"`` both years and both 2025 halves; empty: every aime* file there);
    `load_benchmark_files` also says which files were read and how many items each gave);
  * a directory written by `datasets` ``save_to_disk``, or a local copy of a hub dataset repository
    (read with `datasets.load_dataset(dir)`); a dataset with several splits takes `split`, else the
    benchmark's usual split (JBB harmful, MATH-500 / HumanEval test, else train), else its only one;
  * ``hf:<owner>/<name>[:<config>[:<split>]]``: the hub dataset through `datasets.load_dataset`,
    only when the hub is reachable; with HF_HUB_OFFLINE / HF_DATASETS_OFFLINE set it is an error
    saying so.  Known repositories get their config by default (JBB-Behaviors: behaviors,
    wildjailbreak: eval, gpqa: gpqa_diamond), so ``hf:JailbreakBench/JBB-Behaviors::benign`` is the
    benign split.  One split of a saved DatasetDict is its subdirectory (``saved/benign``).

Ids are ``<benchmark>-<published id>`` (JBB benign: ``jailbreakbench-benign-<Index>``); a layout
without an id column uses the row number (AIME: ``<file stem or hub config>-<row>``, because AIME 2025
comes in two files / configs).  `sample=N` takes a seeded random sample of N items, kept in file order (the same N and
seed give the same items); for wildjailbreak the sample is drawn from the adversarial_harmful rows
only.  A sample larger than what is there is an error, not a smaller sample.  `limit` then keeps
the first `limit` items.  `seed` also drives the GPQA option order: each item's permutation comes
from (seed, its Record ID), so it does not depend on the other rows.

Errors are `EvalDataError` (a ValueError: the CLI exits 2 with one line) naming the file, the row
(CSV: ``row N (line L)``, JSONL: ``line N``, parquet / datasets: ``row N``) and the column, and what
was expected: a missing column (with the columns found), an empty prompt, a duplicate id, a GPQA
row with fewer than four non-empty options, an answer-less math row, a file that is not UTF-8, an
unknown benchmark name (with the known ones).  No row is skipped silently.

Every file is parsed whole, strictly, before any model loads: CSV / TSV in the csv module's strict
mode (a stray quote or one left open to the end of the file is an error naming the line), every row
with exactly the header's number of fields, and a quoted field whose line breaks hold a line that
is a row of its own (the header's number of fields: rows swallowed by a quote left open and closed
rows later) refused, naming the line where the quote opened; JSON without NaN / Infinity (an answer
"nan" would score); JSONL read one line at a time, each at most 64 MiB
(`ipo_jax.data.records.MAX_LINE_BYTES`), split at newlines only (U+2028 inside a string is text).
"""

from __future__ import annotations

import csv
import dataclasses
import gzip
import hashlib
import io
import json
import math
import os
import random
import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from ipo_jax.data.records import MAX_LINE_BYTES, STRICT_NUMBERS, byte_size_text
from ipo_jax.eval.items import KINDS, EvalItem


class EvalDataError(ValueError):
    """A benchmark file is missing or malformed; the message names file, row and column."""


PUBLISHED_FILES: dict[str, tuple[str, ...]] = {
    "jailbreakbench": ("harmful-behaviors.csv", "benign-behaviors.csv",
                       "data/harmful-behaviors.csv", "data/benign-behaviors.csv"),  # the last two: a clone of the hub repo
    "strongreject": ("strongreject_dataset.csv", "strongreject_small_dataset.csv",
                     "strongreject_dataset/strongreject_dataset.csv"),  # the last: a clone of the GitHub repo
    "wildjailbreak": ("eval.tsv", "train.tsv", "eval/eval.tsv", "train/train.tsv"),
    "xstest": ("xstest_prompts.csv", "xstest_v2_prompts.csv"),
    "aime": ("aime_2024_problems.parquet", "aime2025-I.jsonl", "aime2025-II.jsonl", "aime2024.jsonl", "aime2025.jsonl",
             "test.jsonl", "train.jsonl"),
    "math500": ("test.jsonl",),
    "gpqa": ("gpqa_diamond.csv", "dataset/gpqa_diamond.csv"),
    "humaneval": ("HumanEval.jsonl", "HumanEval.jsonl.gz", "data/HumanEval.jsonl.gz", "human-eval-v2-20210705.jsonl"),
    "jsonl": (),
}
BENCHMARKS = tuple(PUBLISHED_FILES)

# the split a multi-split dataset gives when none is named, and the config of known hub repositories
DEFAULT_SPLITS = {"jailbreakbench": "harmful", "math500": "test", "humaneval": "test"}
HUB_CONFIGS = {"jailbreakbench/jbb-behaviors": "behaviors", "allenai/wildjailbreak": "eval",
               "idavidrein/gpqa": "gpqa_diamond"}
HUB_LOAD_KWARGS = {"allenai/wildjailbreak": dict(delimiter="\t", keep_default_na=False)}  # as its dataset card says
_HUB_PREFIX = "hf:"
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
_DATA_SUFFIXES = (".csv", ".tsv", ".json", ".jsonl", ".jsonl.gz", ".parquet", ".arrow")
GPQA_OPTION_COLUMNS = ("Correct Answer", "Incorrect Answer 1", "Incorrect Answer 2", "Incorrect Answer 3")
LETTERS = "ABCD"
CHOICE_COUNT = len(LETTERS)  # options of a choice item (GPQA's four; our jsonl files too)


@dataclasses.dataclass
class _Table:
    """Rows read from one file or one dataset split, each with its location for error messages."""

    source: str  # the file path, or the hub id / directory and split
    part: str  # the file name or split name (JBB: harmful or benign)
    columns: list[str]
    rows: list[tuple[str, dict[str, Any]]]  # (location such as "row 3 (line 4)", row)
    label: str = ""  # a dataset's short name (hub config, directory) for row-number ids; files use their stem

    def at(self, location: str) -> str:
        return f"{self.source}: {location}"


# ---------------------------------------------------------------- reading files and datasets


def _decode(data: bytes, path: Path, line: int = 1) -> str:
    """`data` (the whole file, or its line `line`) as UTF-8; an error names line and column."""
    try:
        return data.decode("utf-8-sig")  # a BOM (spreadsheet exports) is not part of the first column name
    except UnicodeDecodeError as e:
        line += data[: e.start].count(b"\n")
        column = e.start - (data.rfind(b"\n", 0, e.start) + 1) + 1
        raise EvalDataError(f"{path}: line {line}, column {column}: byte 0x{data[e.start]:02x} is not valid UTF-8; "
                            "expected a UTF-8 text file") from None


def _csv_rows(path: Path, text: str, delimiter: str) -> tuple[list[str], list[tuple[str, dict[str, Any]]]]:
    """The header and (location, row) of every row, strictly (module docstring)."""
    reader = csv.DictReader(io.StringIO(text, newline=""), delimiter=delimiter, strict=True)
    lines = reader.reader  # its line_num also counts a row that failed (DictReader's only successful ones)
    try:
        columns = list(reader.fieldnames or [])
    except csv.Error as e:
        raise EvalDataError(f"{path}: line {lines.line_num}: not valid CSV ({e})") from None
    rows, index = [], 0
    while True:
        start = lines.line_num + 1
        try:
            row = next(reader)
        except StopIteration:
            break
        except csv.Error as e:
            opened = f" (the row starts on line {start}: a quote left open?)" if lines.line_num > start else ""
            raise EvalDataError(f"{path}: line {lines.line_num}: not valid CSV ({e}){opened}") from None
        index += 1
        location = f"row {index} (line {start})"
        if None in row:  # more fields than the header has columns
            raise EvalDataError(f"{path}: {location}: {len(columns) + len(row[None])} fields but the header has "
                                f"{len(columns)} columns {columns}")
        if any(value is None for value in row.values()):  # fewer
            count = sum(value is not None for value in row.values())
            raise EvalDataError(f"{path}: {location}: {count} field{'s' if count != 1 else ''} but the header has "
                                f"{len(columns)} columns {columns}")
        if lines.line_num > start:
            _check_no_swallowed_rows(path, start, row, len(columns), delimiter)
        rows.append((location, row))
    return columns, rows


def _check_no_swallowed_rows(path: Path, start: int, row: dict[str, Any], columns: int, delimiter: str) -> None:
    """A row spanning lines (a quoted field with line breaks) must not hold a line that is itself
    a row of `columns` fields: that is rows swallowed by a quote left open (module docstring)."""
    for column, value in row.items():
        if "\n" not in value or columns < 2:
            continue
        for line in value.split("\n")[1:]:
            try:
                fields = next(csv.reader([line], delimiter=delimiter, strict=True), [])
            except csv.Error:
                continue
            if len(fields) == columns:
                raise EvalDataError(
                    f"{path}: line {start}: a quoted field (column {column!r}) opened on this line runs over "
                    f"{value.count(chr(10)) + 1} lines and holds {_clip(line)!r}, a row of {columns} fields of its own; "
                    "a quote left open? (close it, or double a quote inside a field: \"\")")


def _clip(text: str, limit: int = 60) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _jsonl_rows(path: Path) -> list[tuple[str, dict[str, Any]]]:
    """(location, row) of every line of a .jsonl / .jsonl.gz file, read one line at a time."""
    opener = gzip.open if path.name.lower().endswith(".gz") else open
    rows = []
    try:
        with opener(path, "rb") as f:
            n = 0
            while raw := f.readline(MAX_LINE_BYTES + 1):
                n += 1
                if len(raw) > MAX_LINE_BYTES:
                    raise EvalDataError(f"{path}: line {n}: longer than {byte_size_text(MAX_LINE_BYTES)}, the limit for "
                                        "one record; expected one JSON object per line")
                line = _decode(raw, path, line=n).removesuffix("\n").removesuffix("\r")
                if n == 1:
                    line = line.removeprefix("\ufeff")
                if not line.strip():
                    continue
                try:
                    row = json.loads(line, **STRICT_NUMBERS)
                except json.JSONDecodeError as e:
                    raise EvalDataError(f"{path}: line {n}: not valid JSON ({e.msg}, column {e.colno})") from None
                except (ValueError, RecursionError) as e:  # NaN, 1e999, 5000 digits, deep nesting
                    raise EvalDataError(f"{path}: line {n}: not valid JSON here "
                                        f"({e if isinstance(e, ValueError) else 'nested too deeply'})") from None
                if not isinstance(row, dict):
                    raise EvalDataError(f"{path}: line {n}: expected a JSON object, got {type(row).__name__}")
                rows.append((f"line {n}", row))
    except (OSError, EOFError) as e:
        if isinstance(e, FileNotFoundError) or not path.name.lower().endswith(".gz"):
            raise
        raise EvalDataError(f"{path}: not a valid gzip file ({e})") from None
    return rows


def _read_file(path: Path, part: str | None = None) -> _Table:
    name = path.name.lower()
    part = part or path.name
    if name.endswith((".csv", ".tsv")):
        columns, rows = _csv_rows(path, _decode(path.read_bytes(), path), "\t" if name.endswith(".tsv") else ",")
        return _Table(str(path), part, columns, rows)
    if name.endswith((".jsonl", ".jsonl.gz")):
        rows = _jsonl_rows(path)
        return _Table(str(path), part, list(rows[0][1]) if rows else [], rows)
    if name.endswith(".json"):
        try:
            data = json.loads(_decode(path.read_bytes(), path), **STRICT_NUMBERS)
        except json.JSONDecodeError as e:
            raise EvalDataError(f"{path}: line {e.lineno}, column {e.colno}: not valid JSON ({e.msg})") from None
        except (ValueError, RecursionError) as e:
            raise EvalDataError(f"{path}: not valid JSON ({e if isinstance(e, ValueError) else 'nested too deeply'})") from None
        if isinstance(data, dict) and isinstance(data.get("data"), list):
            data = data["data"]
        if not isinstance(data, list) or not all(isinstance(r, dict) for r in data):
            raise EvalDataError(f"{path}: expected a JSON list of objects (or {{'data': [...]}})")
        return _Table(str(path), part, list(data[0]) if data else [],
                      [(f"record {i}", r) for i, r in enumerate(data, 1)])
    if name.endswith(".parquet"):
        import pyarrow.parquet as pq

        try:
            table = pq.read_table(path)
        except Exception as e:  # noqa: BLE001 - pyarrow raises several types for a damaged file
            raise EvalDataError(f"{path}: not a readable parquet file ({type(e).__name__}: {e})") from None
        return _Table(str(path), part, list(table.schema.names),
                      [(f"row {i}", r) for i, r in enumerate(table.to_pylist(), 1)])
    raise EvalDataError(f"{path}: unsupported file type; expected one of {', '.join(_DATA_SUFFIXES[:-1])} "
                        "or a dataset directory")


def _dataset_table(data, source: str, name: str, split: str | None, default_part: str = "", label: str = "") -> _Table:
    """A _Table from a `datasets` Dataset or DatasetDict, choosing the split.  A single Dataset's
    part is its split name, else `default_part` (a split's own save_to_disk directory: its name)."""
    import datasets

    if isinstance(data, (datasets.DatasetDict, dict)):
        names = list(data)
        if split is not None:
            chosen = split
        elif DEFAULT_SPLITS.get(name) in names:
            chosen = DEFAULT_SPLITS[name]
        elif len(names) == 1:
            chosen = names[0]
        elif "test" in names:
            chosen = "test"
        else:
            chosen = "train" if "train" in names else None
        if chosen not in data:
            raise EvalDataError(f"{source}: no split {chosen!r}; the dataset has the splits {names} (give one with split=)")
        data, part = data[chosen], chosen
    else:
        part = split or str(getattr(data, "split", None) or "") or default_part
    return _Table(f"{source} (split {part})" if part else source, part, list(data.column_names),
                  [(f"row {i}", r) for i, r in enumerate(data.to_list(), 1)], label=label or part)


def _hub_offline() -> bool:
    return any(os.environ.get(v, "").strip().lower() in ("1", "true", "yes", "on")
               for v in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"))


def _load_hub(name: str, spec: str, split: str | None) -> _Table:
    """`hf:<owner>/<name>[:<config>[:<split>]]` through `datasets.load_dataset`."""
    repo, _, rest = spec[len(_HUB_PREFIX):].partition(":")
    config, _, split_in_spec = rest.partition(":")
    if split_in_spec:
        if split is not None and split != split_in_spec:
            raise EvalDataError(f"{name}: {spec} names split {split_in_spec!r} but split={split!r} was given")
        split = split_in_spec
    if not _HUB_ID.match(repo):
        raise EvalDataError(f"{name}: {spec!r} is not a hub dataset id; expected hf:<owner>/<name>[:<config>[:<split>]]")
    config = config or HUB_CONFIGS.get(repo.lower())
    if _hub_offline():
        raise EvalDataError(f"{name}: {spec}: the Hugging Face hub is offline (HF_HUB_OFFLINE / HF_DATASETS_OFFLINE set); "
                            "download the published file (or datasets save_to_disk) and give its local path")
    import datasets

    try:
        data = datasets.load_dataset(repo, config, split=split, **HUB_LOAD_KWARGS.get(repo.lower(), {}))
    except Exception as e:  # noqa: BLE001 - any hub failure (unreachable, gated, no such config) becomes one line
        raise EvalDataError(f"{name}: {spec}: could not load it from the Hugging Face hub "
                            f"({type(e).__name__}: {' '.join(str(e).split())})") from None
    return _dataset_table(data, f"{_HUB_PREFIX}{repo}" + (f":{config}" if config else ""), name, split,
                          label=config or repo.split("/")[1])


def _is_data_file(path: Path) -> bool:
    return path.is_file() and path.name.lower().endswith(_DATA_SUFFIXES)


_AIME_YEAR = re.compile(r"(?<!\d)(20\d\d)(?!\d)")


def aime_year(name: str) -> int | None:
    """The year an AIME file or dataset name carries ("aime_2024_problems.parquet" -> 2024,
    "aime2025-II.jsonl" -> 2025, "hf:opencompass/AIME2025:AIME2025-I" -> 2025); None without one."""
    years = {int(y) for y in _AIME_YEAR.findall(str(name))}
    return years.pop() if len(years) == 1 else None


def parse_years(spec: str | Sequence[int] | None) -> frozenset[int]:
    """'2024' / '2024,2025' (or a sequence of ints) -> the set; '' / None -> empty (every year)."""
    if spec is None:
        return frozenset()
    parts = [str(y).strip() for y in ([spec] if isinstance(spec, (str, int)) else spec)]
    parts = [q for part in parts for q in part.split(",") if q.strip()]
    years = set()
    for part in parts:
        if not re.fullmatch(r"\d{4}", part.strip()):
            raise EvalDataError(f"config.aime.years entry {part.strip()!r}: expected a four-digit year such as 2024 "
                                "(comma-separated for several; '' for every AIME file found)")
        years.add(int(part))
    return frozenset(years)


def _resolve(name: str, path: str | Path, split: str | None, years: frozenset[int] = frozenset()) -> list[_Table]:
    """The tables behind `path` (see the module docstring for what `path` may be)."""
    is_hub = isinstance(path, str) and path.startswith(_HUB_PREFIX)
    if years and (is_hub or not Path(path).is_dir()):  # one file or hub id: its name's year must be one of them
        year = aime_year(str(path) if is_hub else Path(path).name)
        if year is not None and year not in years:
            raise EvalDataError(f"{name}: {path} is AIME {year}, not one of the year(s) "
                                f"{', '.join(map(str, sorted(years)))} that config.aime.years names")
    if isinstance(path, str) and path.startswith(_HUB_PREFIX):
        return [_load_hub(name, path, split)]
    path = Path(path)
    if not path.exists():
        hint = " (a hub dataset is given as hf:<owner>/<name>)" if _HUB_ID.match(str(path)) else ""
        raise EvalDataError(f"{name}: {path} does not exist{hint}")
    if path.is_file():
        return [_read_file(path)]
    import datasets

    if any((path / marker).is_file() for marker in ("dataset_info.json", "dataset_dict.json", "state.json")):
        try:
            data = datasets.load_from_disk(str(path))
        except Exception as e:  # noqa: BLE001 - a damaged or partial save_to_disk directory
            raise EvalDataError(f"{name}: {path}: not a readable datasets save_to_disk directory "
                                f"({type(e).__name__}: {' '.join(str(e).split())})") from None
        return [_dataset_table(data, str(path), name, split, default_part=path.name, label=path.name)]
    present = [path / f for f in PUBLISHED_FILES[name] if (path / f).is_file()]
    if name == "jailbreakbench" and present:
        wanted = "benign" if split == "benign" else "harmful"
        present = [p for p in present if p.name.startswith(wanted)]
        if not present:
            raise EvalDataError(f"{name}: {path} holds no {wanted}-behaviors.csv")
        return [_read_file(present[0])]
    if name == "aime":
        # the AIME files there are one benchmark (opencompass/AIME2025 alone comes as two files, one per
        # exam); `years` keeps the files of those years (module docstring)
        specific = [p for p in present if p.name.lower().startswith("aime")]
        if specific and years:
            chosen = [p for p in specific if aime_year(p.name) in years]
            if not chosen:
                found = ", ".join(f"{p.name} ({aime_year(p.name) or 'year unknown'})" for p in specific)
                raise EvalDataError(f"{name}: {path} holds no AIME file of year(s) {', '.join(map(str, sorted(years)))} "
                                    f"(config.aime.years); found {found}")
            specific = chosen
        if specific:
            return [_read_file(p) for p in specific]
    if present:
        return [_read_file(present[0])]
    nearby = [*path.iterdir(), *(p for d in path.iterdir() if d.is_dir() for p in d.iterdir())]
    if any(_is_data_file(p) for p in nearby):
        try:  # a local copy of a hub repository: `datasets` knows its data-file layout (data/train-*.parquet ...)
            data = datasets.load_dataset(str(path))
        except Exception as e:  # noqa: BLE001
            raise EvalDataError(f"{name}: {path}: holds none of the published files {list(PUBLISHED_FILES[name])} and "
                                f"`datasets` could not read it as a dataset repository ({type(e).__name__}: {e})") from None
        return [_dataset_table(data, str(path), name, split, label=path.name)]
    raise EvalDataError(f"{name}: {path} holds none of the published files {list(PUBLISHED_FILES[name])}, no data files, "
                        "and is not a datasets save_to_disk directory")


# ---------------------------------------------------------------- column access


def _column(table: _Table, *names: str, required: bool = True) -> str | None:
    """The first of `names` that the table has; a required column that is absent is an error."""
    for n in names:
        if n in table.columns:
            return n
    if not required:
        return None
    wanted = " or ".join(repr(n) for n in names)
    raise EvalDataError(f"{table.source}: column {wanted} missing; columns found: {table.columns}")


def _cell(table: _Table, location: str, row: dict, column: str) -> Any:
    if column not in row:  # only JSON rows can lack a key the first row has
        raise EvalDataError(f"{table.at(location)}: column {column!r} missing; columns found: {list(row)}")
    return row[column]


def _text(table: _Table, location: str, row: dict, column: str, *, strip: bool = True) -> str:
    """A non-blank string cell (stripped unless `strip` is False: code prompts keep their layout)."""
    value = _cell(table, location, row, column)
    if not isinstance(value, str) or not value.strip():
        raise EvalDataError(f"{table.at(location)}: column {column!r} must be a non-empty string, got {value!r}")
    return value.strip() if strip else value


def _scalar(table: _Table, location: str, row: dict, column: str) -> str:
    """A non-empty id or answer cell as a string (an integer column -- AIME answers -- reads as digits)."""
    value = _cell(table, location, row, column)
    if isinstance(value, float) and not math.isfinite(value):  # a parquet / dataset NaN is no answer
        raise EvalDataError(f"{table.at(location)}: column {column!r} is {value}; expected a non-empty string or a finite number")
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, (str, int, float)) or not str(value).strip():
        raise EvalDataError(f"{table.at(location)}: column {column!r} must be a non-empty string or number, got {value!r}")
    return str(value).strip()


def _optional(row: dict, column: str | None) -> str | None:
    value = row.get(column) if column else None
    return None if value is None or (isinstance(value, str) and not value.strip()) else str(value).strip()


# ---------------------------------------------------------------- one parser per benchmark
# each returns [(location, EvalItem)] for one table; ids are without the benchmark prefix


def _jailbreakbench(table: _Table, seed: int) -> list[tuple[str, EvalItem]]:
    goal = _column(table, "Goal", "goal")
    index, category = _column(table, "Index", required=False), _column(table, "Category", "category", required=False)
    benign = "benign" in table.part.lower()
    out = []
    for n, (location, row) in enumerate(table.rows, 1):
        id_ = _scalar(table, location, row, index) if index else str(n)
        out.append((location, EvalItem(f"benign-{id_}" if benign else id_, "", _text(table, location, row, goal),
                                       "benign" if benign else "harmful", category=_optional(row, category))))
    return out


def _strongreject(table: _Table, seed: int) -> list[tuple[str, EvalItem]]:
    prompt, category = _column(table, "forbidden_prompt", "prompt"), _column(table, "category", required=False)
    return [(location, EvalItem(str(n), "", _text(table, location, row, prompt), "harmful",
                                category=_optional(row, category)))
            for n, (location, row) in enumerate(table.rows, 1)]


def _wildjailbreak_kind(table: _Table, location: str, row: dict) -> str:
    data_type = str(row.get("data_type") or "")
    if data_type.endswith("_harmful"):
        return "harmful"
    if data_type.endswith("_benign"):
        return "benign"
    if str(row.get("label")).strip() in ("1", "0"):
        return "harmful" if str(row["label"]).strip() == "1" else "benign"
    raise EvalDataError(f"{table.at(location)}: column 'data_type' is {data_type!r} and column 'label' is {row.get('label')!r}; "
                        "expected data_type ending in _harmful / _benign, or label 1 / 0")


def _wildjailbreak(table: _Table, seed: int) -> list[tuple[str, EvalItem]]:
    _column(table, "adversarial", "vanilla")
    out = []
    for n, (location, row) in enumerate(table.rows, 1):
        column = "adversarial" if isinstance(row.get("adversarial"), str) and row["adversarial"].strip() else "vanilla"
        if column not in row:
            raise EvalDataError(f"{table.at(location)}: column 'adversarial' is empty and there is no 'vanilla' column")
        kind = _wildjailbreak_kind(table, location, row)
        out.append((location, EvalItem(str(n), "", _text(table, location, row, column), kind,
                                       category=_optional(row, "data_type"))))
    return out


def _xstest(table: _Table, seed: int) -> list[tuple[str, EvalItem]]:
    prompt, label = _column(table, "prompt"), _column(table, "label", "final_label")
    id_col, type_col = _column(table, "id", "id_v2", required=False), _column(table, "type", required=False)
    out = []
    for n, (location, row) in enumerate(table.rows, 1):
        value = str(row.get(label, "")).strip().lower()
        if value not in ("safe", "unsafe"):
            raise EvalDataError(f"{table.at(location)}: column {label!r} is {row.get(label)!r}; expected 'safe' or 'unsafe'")
        id_ = _scalar(table, location, row, id_col) if id_col else str(n)
        kind = "benign" if value == "safe" else "harmful"
        out.append((location, EvalItem(id_, "", _text(table, location, row, prompt), kind,
                                       category=_optional(row, type_col))))
    return out


def _aime(table: _Table, seed: int) -> list[tuple[str, EvalItem]]:
    problem, answer = _column(table, "problem", "Problem", "question"), _column(table, "answer", "Answer")
    id_col, year = _column(table, "id", "ID", required=False), _column(table, "year", "Year", required=False)
    stem = table.label or Path(table.part).name.split(".")[0]  # opencompass/AIME2025: "AIME2025-I", "aime2025-I"
    out = []
    for n, (location, row) in enumerate(table.rows, 1):
        id_ = _scalar(table, location, row, id_col) if id_col else f"{stem}-{n}"
        out.append((location, EvalItem(id_, "", _text(table, location, row, problem), "math",
                                       reference=_scalar(table, location, row, answer), category=_optional(row, year))))
    return out


def _math500(table: _Table, seed: int) -> list[tuple[str, EvalItem]]:
    problem, answer = _column(table, "problem"), _column(table, "answer")
    id_col, subject = _column(table, "unique_id", required=False), _column(table, "subject", required=False)
    return [(location, EvalItem(_scalar(table, location, row, id_col) if id_col else str(n), "",
                                _text(table, location, row, problem), "math",
                                reference=_scalar(table, location, row, answer), category=_optional(row, subject)))
            for n, (location, row) in enumerate(table.rows, 1)]


def gpqa_permutation(seed: int, key: str) -> list[int]:
    """The displayed order of GPQA's four options [correct, incorrect 1..3] for one item: a
    permutation drawn from a generator seeded by (seed, the item's Record ID) alone."""
    digest = hashlib.sha256(f"gpqa-options:{seed}:{key}".encode()).digest()
    return random.Random(int.from_bytes(digest[:8], "big")).sample(range(4), 4)


def _gpqa(table: _Table, seed: int) -> list[tuple[str, EvalItem]]:
    question = _column(table, "Question")
    options = [_column(table, c) for c in GPQA_OPTION_COLUMNS]
    id_col, domain = _column(table, "Record ID", required=False), _column(table, "High-level domain", required=False)
    out = []
    for n, (location, row) in enumerate(table.rows, 1):
        texts = []
        for column in options:
            value = row.get(column)
            if not isinstance(value, str) or not value.strip():
                raise EvalDataError(f"{table.at(location)}: column {column!r} is empty ({value!r}); a GPQA question needs four "
                                    f"non-empty options ({', '.join(GPQA_OPTION_COLUMNS)})")
            texts.append(value.strip())
        prompt = _text(table, location, row, question)
        id_ = _scalar(table, location, row, id_col) if id_col else str(n)
        order = gpqa_permutation(seed, id_ if id_col else prompt)  # without Record IDs: keyed by the question itself
        out.append((location, EvalItem(id_, "", prompt, "choice", reference=LETTERS[order.index(0)],
                                       category=_optional(row, domain), choices=tuple(texts[i] for i in order))))
    return out


def _humaneval(table: _Table, seed: int) -> list[tuple[str, EvalItem]]:
    task_id, prompt, test, entry = (_column(table, c) for c in ("task_id", "prompt", "test", "entry_point"))
    out = []
    for location, row in table.rows:
        entry_point = _text(table, location, row, entry)
        if not entry_point.isidentifier():
            raise EvalDataError(f"{table.at(location)}: column {entry!r} is {entry_point!r}; expected a Python function name")
        prompt_text = _text(table, location, row, prompt, strip=False)
        out.append((location, EvalItem(_scalar(table, location, row, task_id), "", prompt_text, "code",
                                       tests=_text(table, location, row, test, strip=False), entry_point=entry_point)))
    return out


def _jsonl(table: _Table, seed: int) -> list[tuple[str, EvalItem]]:
    out = []
    for location, row in table.rows:
        id_ = row.get("id")
        if not isinstance(id_, str) or not id_:
            raise EvalDataError(f"{table.at(location)}: field 'id' must be a non-empty string, got {id_!r}")
        where = f"{table.at(location)} (id {id_!r})"
        kind = row.get("kind")
        if kind not in KINDS:
            raise EvalDataError(f"{where}: field 'kind' is {kind!r}; expected one of {KINDS}")
        reference, choices = row.get("reference"), row.get("choices")
        tests, entry_point = row.get("tests"), row.get("entry_point")
        if kind == "math" and not (isinstance(reference, (str, int, float)) and str(reference).strip()):
            raise EvalDataError(f"{where}: a math item needs a 'reference' answer")
        if kind == "choice":
            # four, as GPQA: the scorer reads the letters A-D (ipo_jax.eval.scoring)
            if not (isinstance(choices, list) and len(choices) == CHOICE_COUNT
                    and all(isinstance(c, str) and c.strip() for c in choices)):
                raise EvalDataError(f"{where}: field 'choices' is {choices!r}; a choice item needs a list of "
                                    f"{CHOICE_COUNT} non-empty strings (options A-D)")
            letters = LETTERS[:CHOICE_COUNT]
            if not (isinstance(reference, str) and len(reference) == 1 and reference in letters):
                raise EvalDataError(f"{where}: field 'reference' is {reference!r}; expected the correct letter, one of {list(letters)}")
        elif choices is not None:
            raise EvalDataError(f"{where}: field 'choices' is only for kind 'choice'")
        if kind == "code":
            if not (isinstance(tests, str) and tests.strip()):
                raise EvalDataError(f"{where}: field 'tests' is {tests!r}; a code item needs the test source "
                                    "(defining check(candidate))")
            if not (isinstance(entry_point, str) and entry_point.isidentifier()):
                raise EvalDataError(f"{where}: field 'entry_point' is {entry_point!r}; expected a Python function name")
        out.append((location, EvalItem(id_, "", _text(table, location, row, "prompt", strip=kind != "code"), kind,
                                       reference=None if reference is None else str(reference),
                                       category=_optional(row, "category"),
                                       choices=tuple(c.strip() for c in choices) if kind == "choice" else (),
                                       tests=tests if kind == "code" else None,
                                       entry_point=entry_point if kind == "code" else None)))
    return out


_PARSERS: dict[str, Callable[[_Table, int], list[tuple[str, EvalItem]]]] = {
    "jailbreakbench": _jailbreakbench, "strongreject": _strongreject, "wildjailbreak": _wildjailbreak,
    "xstest": _xstest, "aime": _aime, "math500": _math500, "gpqa": _gpqa, "humaneval": _humaneval, "jsonl": _jsonl,
}


# ---------------------------------------------------------------- the entry point


def _check_count(value: int | None, what: str) -> int | None:
    if value is None or value == 0:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise EvalDataError(f"{what} is {value!r}; expected a positive whole number (or 0 / None for all)")
    return value


def _sample(name: str, tables: Sequence[_Table], found: list[tuple[_Table, str, dict, EvalItem]], n: int, seed: int):
    """A seeded random sample of n entries (wildjailbreak: of the adversarial harmful rows), in file order."""
    pool, what = found, "items"
    if name == "wildjailbreak":
        for table in tables:
            _column(table, "data_type")  # the sample is defined on it
        pool = [entry for entry in found if str(entry[2].get("data_type")).strip() == "adversarial_harmful"]
        what = "rows with data_type adversarial_harmful"
    if n > len(pool):
        raise EvalDataError(f"{name}: sample={n} but {', '.join(t.source for t in tables)} has only {len(pool)} {what}")
    chosen = sorted(random.Random(seed).sample(range(len(pool)), n))
    return [pool[i] for i in chosen]


def load_benchmark(name: str, path: str | Path, limit: int | None = None, split: str | None = None, *,
                   sample: int | None = None, seed: int = 0, years: str | Sequence[int] | None = None) -> list[EvalItem]:
    """The items of benchmark `name` read from `path` (see the module docstring)."""
    return load_benchmark_files(name, path, limit, split, sample=sample, seed=seed, years=years)[0]


def load_benchmark_files(name: str, path: str | Path, limit: int | None = None, split: str | None = None, *,
                         sample: int | None = None, seed: int = 0, years: str | Sequence[int] | None = None,
                         ) -> tuple[list[EvalItem], list[dict[str, Any]]]:
    """(items, files): `load_benchmark`'s items and, per file or dataset split read, ``{"file",
    "rows", "items"}`` -- its rows and how many of the returned items (after sample and limit) came
    from it.  `years` (AIME only, e.g. "2024" or "2024,2025"; empty: every year) picks a directory's
    AIME files by the year in their names and refuses a file or hub id of another year."""
    if name not in _PARSERS:
        raise EvalDataError(f"unknown benchmark {name!r}; expected one of {', '.join(BENCHMARKS)}")
    limit, sample = _check_count(limit, "limit"), _check_count(sample, "sample")
    wanted = parse_years(years)
    if wanted and name != "aime":
        raise EvalDataError(f"{name}: years={sorted(wanted)} applies to aime only")
    tables = _resolve(name, path, split, wanted)
    found: list[tuple[_Table, str, dict, EvalItem]] = []
    for table in tables:
        if not table.rows:
            raise EvalDataError(f"{table.source}: no rows (columns found: {table.columns})")
        parsed = _PARSERS[name](table, seed)  # one item per row, in order
        found += [(table, location, row, dataclasses.replace(item, benchmark=name,
                                                            id=item.id if name == "jsonl" else f"{name}-{item.id}"))
                  for (location, row), (_, item) in zip(table.rows, parsed, strict=True)]
    seen: dict[str, str] = {}
    for table, location, _, item in found:
        if item.id in seen:
            raise EvalDataError(f"{table.at(location)}: duplicate id {item.id!r} (first at {seen[item.id]})")
        seen[item.id] = table.at(location) if len(tables) > 1 else location
    if sample:
        found = _sample(name, tables, found, sample, seed)
    if limit:
        found = found[:limit]
    files = [dict(file=t.source, rows=len(t.rows), items=sum(entry[0] is t for entry in found)) for t in tables]
    return [entry[3] for entry in found], files
