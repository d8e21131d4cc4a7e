"""One validation pass per stage, run before any work and before anything is written.

`validate_settings(stage, config)` checks every setting the stage reads that has a fixed type or
range and raises `SettingsError` with one line naming the field, its value and what was expected.
The rules come from the stage's config module (ipo_jax/train/config.py, ipo_jax/pipeline/config.py,
ipo_jax/eval/config.py), which registers them here when it is imported (`register_rules`; a stage
config is built by that module, so its rules are there whenever its config is): each section there
is a dataclass whose fields carry their range check (ipo_jax/settings.py), so no setting is listed
here. This module
keeps what no single field can say: the checks that look at files and directories (model specs,
input files, an output path that can be a directory), the checks across fields (an http policy
names its endpoint and model, train.epochs or train.max_steps > 0, the loss and the data's mask
agree, eval's collect-only runs read only merge / compare / out), and two rules over every
setting: each float finite, each integer (tuples included) at most 2**31 - 1 (INT_LIMIT). It sits
below the stages: it imports only leaf modules (settings, models, loss).

Rules are keyed by dotted field name and skipped when the config has no such field, so a stage
whose config grows new fields keeps validating the ones it knows; formats with their own parser
(data.pairs weights, eval benchmarks) are checked by that parser. Record files (pairs, prompts,
trajectories) are checked by their readers (ipo_jax/data/records.py) -- also before anything is
written.
"""

from __future__ import annotations

import math
import os
import tempfile
from pathlib import Path
from typing import Any, Callable, Mapping

from ipo_jax.loss.preference import cross_field_problem as loss_problem
from ipo_jax.models.presets import list_presets
from ipo_jax.settings import INT_LIMIT, int_at_least, is_int

_MISSING = object()
Rules = Mapping[str, Callable[[Any], "str | None"]]


class SettingsError(ValueError):
    """A setting out of range or of the wrong kind; one line naming the field (exit code 2)."""


# ----------------------------------------------------------------------------- checks of files and directories
# Each returns None when the value is fine, else what was expected (the error line says the rest).


def plan_model_spec(v):
    """model_spec, except that an hf:<dir> need not exist here: the planner reads its config.json
    when it does, else plans the preset named like the directory (ipo_jax/train/plan.py)."""
    if isinstance(v, str) and v.startswith("hf:") and v[3:].strip():
        return None
    return model_spec(v)


def model_spec(v):
    """'preset:<known name>', 'hf:<existing directory>' or 'orbax:<existing directory>'."""
    expected = "'preset:<name>', 'hf:<dir>' or 'orbax:<dir>'"
    if not isinstance(v, str) or ":" not in v:
        return expected
    kind, _, location = v.partition(":")
    if kind == "preset":
        names = list_presets()
        return None if location in names else f"a known preset ({', '.join(names)})"
    if kind in ("hf", "orbax"):
        path = Path(location)
        if not location.strip():
            return f"{kind}:<dir> with a directory"
        if not path.exists():
            return f"{kind}:<dir> with an existing directory ({path} does not exist)"
        if not path.is_dir():
            return f"{kind}:<dir> with a directory ({path} is a file)"
        return None
    return expected


def optional_file(v):
    if v == "":
        return None
    if not isinstance(v, str):
        return "a file path or ''"
    path = Path(v)
    if path.is_dir():
        return f"a file ({path} is a directory)"
    return None if path.is_file() else f"an existing file ({path} does not exist)"


def optional_dir(v, *, extra: tuple[str, ...] = ()):
    if v == "" or v in extra:
        return None
    if not isinstance(v, str):
        return "a directory path or ''"
    path = Path(v)
    if path.is_file():
        return f"a directory ({path} is a file)"
    return None if path.is_dir() else f"an existing directory ({path} does not exist)"


def tokenizer_source(v):
    return optional_dir(v, extra=("tiny",))


def file_list(v):
    """Comma-separated existing files, or ''."""
    if not isinstance(v, str):
        return "comma-separated file paths or ''"
    for part in filter(None, (p.strip() for p in v.split(","))):
        problem = optional_file(part)
        if problem:
            return problem
    return None


def output_dir(v):
    """A directory that exists or can be made: no part of the path is a file, the nearest existing
    ancestor is writable."""
    if not isinstance(v, str) or not v.strip():
        return "a non-empty directory path"
    path = Path(v).absolute()
    if path.exists() and not path.is_dir():
        return f"a directory ({path} is a file)"
    ancestor = path
    while not ancestor.exists():
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        return f"a directory path ({ancestor} is a file, so {path} cannot be made)"
    if not os.access(ancestor, os.W_OK | os.X_OK):
        return f"a writable directory ({ancestor} is not writable)"
    try:  # the real test (root passes os.access everywhere; a read-only mount does not show there)
        with tempfile.TemporaryFile(dir=ancestor):
            pass
    except OSError as e:
        return f"a writable directory (cannot write in {ancestor}: {e.strerror or e})"
    return None


def cache_dir(v):
    """reference.cache_dir: '' or a directory path (made when missing), not a file."""
    return None if isinstance(v, str) and not Path(v or ".").is_file() else "a directory path or ''"


# ----------------------------------------------------------------------------- a stage's settings
# stage -> {dotted field: check}, filled by the stage config modules (register_rules)
RULES: dict[str, dict[str, Callable[[Any], "str | None"]]] = {}
# eval with merge=True or compare=...: no model, no benchmarks; only these are read
_EVAL_COLLECT_ONLY = ("merge", "compare", "out")


def register_rules(stage: str, rules: Rules) -> None:
    """Make `rules` the checks of `stage` (called by the stage's config module when imported)."""
    RULES[stage] = dict(rules)


# the demo's own fields (its stages run on their stage configs: ipo_jax/demo.py)
register_rules("demo", {"out": output_dir, "seed": int_at_least(0)})


def stage_rules(stage: str) -> dict[str, Callable[[Any], "str | None"]]:
    """The registered rules of `stage`; LookupError when its config module was never imported
    (a missing rule set must not pass as 'no problems')."""
    if stage not in RULES:
        raise LookupError(f"no settings rules registered for stage {stage!r} (import its config module; "
                          f"registered: {', '.join(sorted(RULES)) or 'none'})")
    return RULES[stage]


def _get(config, dotted: str):
    node = config
    for key in dotted.split("."):
        try:
            node = node[key]
        except (KeyError, TypeError, AttributeError):
            return _MISSING
    return node


def _leaves(config, prefix: str = ""):
    items = config.items() if hasattr(config, "items") else []
    for key, value in items:
        name = f"{prefix}{key}"
        if hasattr(value, "items"):
            yield from _leaves(value, name + ".")
        else:
            yield name, value


def settings_problems(stage: str, config, rules: Rules | None = None) -> list[str]:
    """Every problem with the stage's settings, one line each (empty when all are fine); `rules`
    default to the stage's registered ones."""
    rules = stage_rules(stage) if rules is None else rules
    problems = []
    for name, value in _leaves(config):
        if isinstance(value, float) and not math.isfinite(value):
            problems.append(f"config.{name} is {value}; expected a finite number")
        elif any(is_int(v) and abs(v) > INT_LIMIT for v in (value if isinstance(value, (tuple, list)) else (value,))):
            problems.append(f"config.{name} is {_clipped(value)}; expected integers of at most 2**31 - 1 ({INT_LIMIT:,})")
    flagged = {p.split(" ", 1)[0] for p in problems}
    http_policy = _get(config, "policy.backend") == "http" and "policy.backend" in rules
    if http_policy:  # the served model samples; model.init is only a tokenizer source, if given
        for name in ("policy.base_url", "policy.model"):
            if not isinstance(_get(config, name), str) or not _get(config, name).strip():
                problems.append(f"config.{name} is {_get(config, name)!r}; expected a non-empty string with "
                                "policy.backend 'http'")
    if stage == "eval" and (_get(config, "merge") is True or _get(config, "compare") not in (_MISSING, "")):
        rules = {name: rules[name] for name in _EVAL_COLLECT_ONLY}
    for name, check in rules.items():
        value = _get(config, name)
        if value is _MISSING or f"config.{name}" in flagged or (http_policy and name == "model.init" and value == ""):
            continue
        expected = check(value)
        if expected:
            problems.append(f"config.{name} is {value!r}; expected {expected}")
    if stage in ("train", "plan"):
        epochs, max_steps = _get(config, "train.epochs"), _get(config, "train.max_steps")
        if epochs == 0 and max_steps == 0:
            problems.append("config.train.max_steps and config.train.epochs are both 0; expected one of them > 0")
        loss, mask_from = _get(config, "loss"), _get(config, "data.mask_from")
        problem = None if loss is _MISSING or mask_from is _MISSING else loss_problem(loss, mask_from)
        if problem:  # e.g. a named preset trains on its own mask
            problems.append(f"config.{problem}")
    return problems


def _clipped(value, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def validate_settings(stage: str, config, rules: Rules | None = None) -> None:
    """Raise SettingsError naming the first bad setting (and how many more there are)."""
    problems = settings_problems(stage, config, rules)
    if problems:
        more = f" (and {len(problems) - 1} more setting{'s' if len(problems) > 2 else ''}: " \
               + ", ".join(p.split(" ", 1)[0] for p in problems[1:]) + ")" if len(problems) > 1 else ""
        raise SettingsError(problems[0] + more)
