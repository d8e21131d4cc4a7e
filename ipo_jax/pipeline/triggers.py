"""The safety-trigger pool: sentences that replace the first compliance cue of an unsafe
reasoning trace before the policy continues sampling.

`DEFAULT_TRIGGERS` holds six triggers in the style of the paper's (a sentence in which the
model recognises the risk and turns to refusing), in this project's own wording.  Each is a
single sentence by `ipo_jax.pipeline.steps.split_sentences`, reads as refusal/risk phrasing to
the default `PatternJudge`, and is not a compliance cue to the default `PatternCueDetector`
(the tests check all three).

`load_triggers(path)` reads a pool from a file:

* ``*.jsonl``: one JSON object per non-blank line with a string field ``"trigger"`` (other
  fields are ignored);
* anything else: plain text, one trigger per line; blank lines and lines whose first
  non-space character is ``#`` are ignored (a ``#`` later in a line is part of the trigger).

Surrounding whitespace is stripped.  Errors (`TriggerFileError`, a ValueError) name the file
and line: an empty trigger, a trigger with a line break (JSONL), a duplicate (compared after
collapsing whitespace and ignoring case; the message names both lines), a malformed JSONL
line; an empty pool is refused.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

DEFAULT_TRIGGERS: tuple[str, ...] = (
    "Wait, I should stop here: this request could cause real harm, so I need to refuse.",
    "Hmm, this is asking for something dangerous, and I shouldn't help with it.",
    "Hold on, the user wants help with something illegal, so I have to be careful here.",
    "Actually, giving these details could hurt someone, so I won't provide them.",
    "Let me reconsider: helping with this would be unsafe, and the right move is to decline.",
    "Wait, this crosses a line; I can't help with something that could put people at risk.",
)


class TriggerFileError(ValueError):
    """A trigger file (or list) is malformed; the message names the file and line."""


def _key(trigger: str) -> str:
    return " ".join(trigger.split()).casefold()


def check_triggers(triggers: Iterable[str], source: str = "<triggers>") -> tuple[str, ...]:
    """Validate an in-memory pool (non-empty strings, single line, no duplicates, not empty);
    returns it stripped, as a tuple.  Errors name `source` and the 1-based position."""
    items = [(f"{source}:{i}", t) for i, t in enumerate(triggers, 1)]
    return _check(items, source)


def _check(items: list[tuple[str, object]], source: str) -> tuple[str, ...]:
    seen: dict[str, str] = {}
    out = []
    for where, trigger in items:
        if not isinstance(trigger, str):
            raise TriggerFileError(f"{where}: trigger must be a string, got {type(trigger).__name__}")
        trigger = trigger.strip()
        if not trigger:
            raise TriggerFileError(f"{where}: empty trigger")
        if "\n" in trigger or "\r" in trigger:
            raise TriggerFileError(f"{where}: trigger contains a line break; a trigger is one sentence")
        key = _key(trigger)
        if key in seen:
            raise TriggerFileError(f"{where}: duplicate trigger (first at {seen[key]}): {trigger!r}")
        seen[key] = where
        out.append(trigger)
    if not out:
        raise TriggerFileError(f"{source}: no triggers (the trigger pool must not be empty)")
    return tuple(out)


def load_triggers(path: str | Path) -> tuple[str, ...]:
    """Read a trigger pool from a text or JSONL file (format and errors: module docstring)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"trigger file {path} not found")
    lines = path.read_text(encoding="utf-8-sig").splitlines()
    items: list[tuple[str, object]] = []
    jsonl = path.suffix.lower() == ".jsonl"
    for line_no, line in enumerate(lines, 1):
        where = f"{path}:{line_no}"
        if not line.strip():
            continue
        if not jsonl:
            if line.lstrip().startswith("#"):
                continue
            items.append((where, line))
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            raise TriggerFileError(f"{where}: invalid JSON: {e}") from None
        if not isinstance(record, dict) or "trigger" not in record:
            raise TriggerFileError(f"{where}: expected an object with a 'trigger' field")
        items.append((where, record["trigger"]))
    return _check(items, str(path))


__all__ = ["DEFAULT_TRIGGERS", "TriggerFileError", "check_triggers", "load_triggers"]
