"""Typed settings: the machinery that makes a frozen dataclass the one source of a config section.

Each section of a stage config (``model``, ``sampling``, ``judge``, ``csr``, ...) is a frozen
dataclass whose fields carry their default, their help text and their range check::

    @dataclasses.dataclass(frozen=True)
    class CsrSettings:
        num_samples: int = setting(32, "continuations per sentence (paper: 32)", int_at_least(1))

`section(CsrSettings)` builds the ConfigDict that config files and ``--config.*`` overrides
change (ml_collections is the override layer on top), `rules_of` gives the validation rules
(``{'csr.num_samples': check}``) and `help_of` the help texts ``ipo-jax STAGE --help`` prints.
Library code that takes these settings reads the dataclass's default
(``batch_size: int = SamplerSettings.batch_size``) instead of writing it again.

A check is a function of the value returning None when it is fine, else what is expected
("an integer >= 1"); the error line names the field and the value (ipo_jax/validation.py).
Checks of single values live here; checks that look at files, or at several fields, live in
ipo_jax/validation.py. This module is a leaf: it imports nothing of ipo_jax.
"""

from __future__ import annotations

import dataclasses
import json
import math
import typing
from typing import Any, Callable

import ml_collections
from ml_collections import config_dict

Check = Callable[[Any], "str | None"]

INT_LIMIT = 2**31 - 1  # every integer setting: the int32 arrays and XLA shapes they end up in
MAX_TOKENS = 2**20  # token counts: eight times the longest context of the shipped models


# ----------------------------------------------------------------------------- the field helper


def setting(default, help: str = "", check: Check | None = None):
    """A dataclass field with its default, help text and range check (in the field's metadata)."""
    return dataclasses.field(default=default, metadata={"help": help, "check": check})


def http_retry_settings() -> dict[str, Any]:
    """The retry fields an HTTP client section shares (the policy's and the judge's, both served
    by `ipo_jax.http.HttpTransport`): ``max_retries``, ``backoff``, ``max_backoff``; each section
    writes ``max_retries: int = http_retry_settings()["max_retries"]`` and so on."""
    return dict(
        max_retries=setting(4, "http: retries after the first attempt (timeouts, connection errors, 5xx, 429)",
                            int_at_least(0)),
        backoff=setting(1.0, "http: seconds before the first retry, doubled each time", number_in(0)),
        max_backoff=setting(30.0, "http: cap on one wait (also on a server's Retry-After)", number_in(0)),
    )


def section(settings_type, exclude=(), **defaults) -> ml_collections.ConfigDict:
    """The ConfigDict of a settings dataclass: its fields and defaults (`defaults` replaces some, for
    a stage whose section starts elsewhere: the policy's mesh). A None default (``alpha: float |
    None = None``) becomes a typed placeholder, so ``--config.loss.alpha=0.5`` still parses."""
    hints = typing.get_type_hints(settings_type)

    def default(field):
        value = defaults.get(field.name, field.default)
        if value is not None:
            return value
        kinds = [t for t in typing.get_args(hints[field.name]) if t is not type(None)]
        return config_dict.placeholder(kinds[0])

    unknown = set(defaults) - {f.name for f in dataclasses.fields(settings_type)}
    if unknown:
        raise TypeError(f"{settings_type.__name__} has no field {sorted(unknown)}")
    return ml_collections.ConfigDict(
        {f.name: default(f) for f in dataclasses.fields(settings_type) if f.name not in exclude})


def add_fields(config: ml_collections.ConfigDict, settings_type, exclude=()) -> ml_collections.ConfigDict:
    """Add a settings dataclass's fields to `config` itself (a stage's top-level fields); returns it."""
    for name, value in section(settings_type, exclude).items():
        setattr(config, name, value)
    return config


def _prefixed(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name


def rules_of(settings_type, prefix: str = "", exclude=()) -> dict[str, Check]:
    """{'prefix.field': check} for the fields that have a check."""
    return {_prefixed(prefix, f.name): f.metadata["check"] for f in dataclasses.fields(settings_type)
            if f.metadata.get("check") is not None and f.name not in exclude}


def help_of(settings_type, prefix: str = "") -> dict[str, str]:
    """{'prefix.field': help text} for the fields that have one."""
    return {_prefixed(prefix, f.name): f.metadata["help"] for f in dataclasses.fields(settings_type)
            if f.metadata.get("help")}


def from_config(settings_type, config_section, **changes):
    """The dataclass filled from a ConfigDict section (fields it lacks keep their defaults)."""
    names = {f.name for f in dataclasses.fields(settings_type)}
    values = {k: v for k, v in dict(config_section).items() if k in names}
    return settings_type(**{**values, **changes})


def check_fields(settings, prefix: str) -> None:
    """ValueError naming the first field of a settings dataclass whose check refuses its value."""
    for field in dataclasses.fields(settings):
        check = field.metadata.get("check")
        value = getattr(settings, field.name)
        expected = check(value) if check else None
        if expected:
            raise ValueError(f"{_prefixed(prefix, field.name)} must be {expected}, got {value!r}")


# ----------------------------------------------------------------------------- checks of single values


def is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def int_at_least(low: int, note: str = "") -> Check:
    def check(v):
        return None if is_int(v) and v >= low else f"an integer >= {low}{note}"
    return check


def int_in(low: int, high: int, note: str = "") -> Check:
    def check(v):
        return None if is_int(v) and low <= v <= high else f"an integer from {low} to {high:,}{note}"
    return check


def tokens(low: int = 1, note: str = "") -> Check:
    """A token count: low .. MAX_TOKENS."""
    return int_in(low, MAX_TOKENS, note)


def mesh_axis(v):
    return None if is_int(v) and (v >= 1 or v == -1) else "an integer >= 1, or -1 for all remaining devices"


def number_in(low: float, high: float = math.inf, *, low_open: bool = False, high_open: bool = False,
              note: str = "") -> Check:
    def check(v):
        ok = is_number(v) and math.isfinite(v) and (v > low if low_open else v >= low) and (
            high == math.inf or (v < high if high_open else v <= high))
        if ok:
            return None
        left, right = "(" if low_open else "[", ")" if high_open or high == math.inf else "]"
        return f"a finite number in {left}{low:g}, {high:g}{right}{note}"
    return check


def one_of(*choices) -> Check:
    def check(v):
        return None if v in choices else "one of " + ", ".join(repr(c) for c in choices)
    return check


def boolean(v):
    return None if isinstance(v, bool) else "true or false"


def non_empty_string(v):
    return None if isinstance(v, str) and v.strip() else "a non-empty string"


def any_string(what: str) -> Check:
    def check(v):
        return None if isinstance(v, str) else what
    return check


def token_lengths(v):
    """Row lengths (data.buckets): a tuple of token counts 2 .. MAX_TOKENS, or () for the default."""
    ok = isinstance(v, (tuple, list)) and all(is_int(x) and 2 <= x <= MAX_TOKENS for x in v)
    return None if ok else f"a tuple of integers from 2 to {MAX_TOKENS:,} (or () for the default)"


def json_object_text(v):
    """'' or the text of a JSON object."""
    if v == "":
        return None
    try:
        return None if isinstance(v, str) and isinstance(json.loads(v), dict) else "'' or a JSON object"
    except ValueError:
        return "'' or a JSON object (this is not valid JSON)"


__all__ = [
    "INT_LIMIT", "MAX_TOKENS", "Check", "add_fields", "any_string", "boolean", "check_fields", "from_config",
    "help_of", "int_at_least", "int_in", "is_int", "is_number", "json_object_text", "mesh_axis", "non_empty_string",
    "number_in", "one_of", "rules_of", "section", "setting", "token_lengths", "tokens",
]
