"""One validation pass per stage, run before any work and before anything is written.

`validate_settings(stage, config)` checks every setting the stage reads that has a fixed type or
range (positive counts, finite floats, probabilities, choices, model specs, input paths that must
exist, an output path that can be a directory) and raises `SettingsError` with one line naming
the field, its value and what was expected. Record files (pairs, prompts, trajectories) are
checked by their readers (ipo_jax/data/records.py) -- also before anything is written.

Rules are keyed by dotted field name and skipped when the config has no such field, so a stage
whose config grows new fields keeps validating the ones it knows; formats with their own parser
(data.pairs weights, eval benchmarks) are checked by that parser, not repeated here. Every float
setting, listed or not, must be finite, and every integer setting (tuples included) at most
2**31 - 1 (INT_LIMIT: the int32 arrays and XLA shapes they end up in); token counts (sequence
lengths, budgets) at most MAX_TOKENS = 2**20, eight times the longest context of the shipped models.

`plan` runs the train rules (RULES["plan"]) less what only a run reads: the pair files, the
tokenizer, the output directory; its model may be an `hf:` directory that is not on this machine
(the planner then uses the preset of that name).
"""

from __future__ import annotations

import math
import os
import re
import tempfile
from pathlib import Path
from typing import Any, Callable

from ipo_jax.data.pairs import LAYOUTS, MASK_FROM
from ipo_jax.loss.preference import FIELD_CHECKS as LOSS_CHECKS, cross_field_problem as loss_problem
from ipo_jax.models import config as model_config
from ipo_jax.models.config import DTYPES, REMAT_POLICIES

from ipo_jax.judging.config import BACKENDS as JUDGE_BACKENDS  # the backends build_judges chooses among
_MISSING = object()


INT_LIMIT = 2**31 - 1
MAX_TOKENS = 2**20


class SettingsError(ValueError):
    """A setting out of range or of the wrong kind; one line naming the field (exit code 2)."""


# ----------------------------------------------------------------------------- single checks
# Each returns None when the value is fine, else what was expected (the error line says the rest).


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def int_at_least(low: int, note: str = "") -> Callable[[Any], str | None]:
    def check(v):
        return None if _is_int(v) and v >= low else f"an integer >= {low}{note}"
    return check


def int_in(low: int, high: int, note: str = "") -> Callable[[Any], str | None]:
    def check(v):
        return None if _is_int(v) and low <= v <= high else f"an integer from {low} to {high:,}{note}"
    return check


def tokens(low: int = 1, note: str = "") -> Callable[[Any], str | None]:
    """A token count: low .. MAX_TOKENS."""
    return int_in(low, MAX_TOKENS, note)


def mesh_axis(v):
    return None if _is_int(v) and (v >= 1 or v == -1) else "an integer >= 1, or -1 for all remaining devices"


def number_in(low: float, high: float = math.inf, *, low_open: bool = False, high_open: bool = False,
              note: str = "") -> Callable[[Any], str | None]:
    def check(v):
        ok = _is_number(v) and math.isfinite(v) and (v > low if low_open else v >= low) and (
            high == math.inf or (v < high if high_open else v <= high))
        if ok:
            return None
        left, right = "(" if low_open else "[", ")" if high_open or high == math.inf else "]"
        return f"a finite number in {left}{low:g}, {high:g}{right}{note}"
    return check


def one_of(*choices) -> Callable[[Any], str | None]:
    def check(v):
        return None if v in choices else "one of " + ", ".join(repr(c) for c in choices)
    return check


def boolean(v):
    return None if isinstance(v, bool) else "true or false"


def non_empty_string(v):
    return None if isinstance(v, str) and v.strip() else "a non-empty string"


def per_benchmark_ints(v, setting: str, high: int = INT_LIMIT):
    """'name=n,...' with integers from 1 to `high` (benchmark names are checked against the run's
    benchmarks later)."""
    from ipo_jax.eval.config import PerBenchmarkError, parse_per_benchmark

    expected = f"name=integer[,name=integer...] with integers from 1 to {high:,} (e.g. aime=16,gpqa=4), or ''"
    if not isinstance(v, str):
        return expected
    try:
        values = parse_per_benchmark(v, setting)
    except PerBenchmarkError:
        return expected
    return expected if any(n > high for n in values.values()) else None


def aime_years(v):
    if not isinstance(v, str) or not all(re.fullmatch(r"\s*\d{4}\s*", y) for y in v.split(",") if y.strip()):
        return "comma-separated four-digit years such as '2024' or '2024,2025' ('' = every AIME file)"
    return None


def token_lengths(v):
    """Row lengths (data.buckets): a tuple of token counts 2 .. MAX_TOKENS, or () for the default."""
    ok = isinstance(v, (tuple, list)) and all(_is_int(x) and 2 <= x <= MAX_TOKENS for x in v)
    return None if ok else f"a tuple of integers from 2 to {MAX_TOKENS:,} (or () for the default)"


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
        from ipo_jax.models.presets import list_presets

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


def json_object_text(v):
    """'' or the text of a JSON object."""
    import json

    if v == "":
        return None
    try:
        return None if isinstance(v, str) and isinstance(json.loads(v), dict) else "'' or a JSON object"
    except ValueError:
        return "'' or a JSON object (this is not valid JSON)"


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


# ----------------------------------------------------------------------------- rules per stage

_MODEL = {
    "model.init": model_spec,
    "model.param_dtype": one_of(*DTYPES),
    "model.dtype": one_of(*DTYPES),
}
if hasattr(model_config, "ATTENTION_KINDS"):  # the kernels the model offers, from their owner
    _MODEL["model.attention"] = one_of(*model_config.ATTENTION_KINDS)
_MESH = {"mesh.data": mesh_axis, "mesh.fsdp": mesh_axis, "mesh.tensor": mesh_axis}
_SAMPLING = {
    "sampling.temperature": number_in(0),
    "sampling.top_p": number_in(0, 1, low_open=True),
    "sampling.top_k": int_at_least(0, " (0 = no top-k)"),
    "sampling.max_new_tokens": tokens(1),
    "sampler.batch_size": int_at_least(1),
    "sampler.chunk_tokens": tokens(1),
    "sampler.continuous_batching": boolean,
    "sampler.max_prompt_length": tokens(1),
}
_POLICY = {  # ipo_jax/rollout/config.py; policy.base_url / policy.model are checked with the backend below
    "policy.backend": one_of("local", "http"),
    "policy.timeout": number_in(0, low_open=True),
    "policy.max_retries": int_at_least(0),
    "policy.backoff": number_in(0),
    "policy.max_backoff": number_in(0),
    "policy.concurrency": int_at_least(1),
    "policy.extra_body": json_object_text,
}
_JUDGE = {
    "judge.backend": one_of(*JUDGE_BACKENDS),
    "detector.backend": one_of("", *JUDGE_BACKENDS),
    "judge.patterns_file": optional_file,
    "judge.timeout": number_in(0, low_open=True),
    "judge.max_retries": int_at_least(0),
    "judge.concurrency": int_at_least(1),
    "judge.max_error_share": number_in(0, 1),
}

RULES: dict[str, dict[str, Callable[[Any], str | None]]] = {
    "train": {
        **_MODEL, **_MESH,
        "model.remat": one_of(*REMAT_POLICIES),
        "tokenizer": tokenizer_source,
        "tiny_tokenizer_vocab": int_at_least(1),
        "data.pairs": non_empty_string,  # the files themselves: read (and checked) before anything is written
        "data.layout": one_of(*LAYOUTS),
        "data.mask_from": one_of(*MASK_FROM),
        "data.max_length": tokens(2),
        "data.max_dropped_share": number_in(0, 1),
        "data.buckets": token_lengths,
        "data.pairs_per_micro": int_at_least(1),
        "data.micro_batches": int_at_least(1),
        "data.seed": int_at_least(0),
        "data.shuffle": boolean,
        **{f"loss.{name}": check for name, check in LOSS_CHECKS.items()},  # the loss's own ranges (LossConfig)
        "reference.mode": one_of("precomputed", "on_the_fly"),
        "reference.cache_dir": lambda v: None if isinstance(v, str) and not Path(v or ".").is_file() else "a directory path or ''",
        "optim.learning_rate": number_in(0, low_open=True),
        "optim.warmup_steps": int_at_least(0),
        "optim.end_lr_ratio": number_in(0, 1),
        "optim.weight_decay": number_in(0),
        "optim.b1": number_in(0, 1, high_open=True),
        "optim.b2": number_in(0, 1, high_open=True),
        "optim.eps": number_in(0, low_open=True),
        "optim.clip_norm": number_in(0, low_open=True),
        "optim.moment_dtype": one_of("float32", "bfloat16"),
        "train.out": output_dir,
        "train.epochs": int_at_least(0),
        "train.max_steps": int_at_least(0, " (0 = train.epochs epochs)"),
        "train.seed": int_at_least(0),
        "train.save_every": int_at_least(1),
        "train.keep_checkpoints": int_at_least(1),
        "train.logprob_chunk": tokens(1),
        "train.max_consecutive_skips": int_at_least(1),
        "train.peak_flops_per_device": number_in(0, note=" (0 = look it up)"),
    },
    "sample": {
        **_MODEL, **_MESH, **_SAMPLING, **_POLICY, **_JUDGE,
        "tokenizer": optional_dir,
        "prompts": non_empty_string,
        "out": output_dir,
        "intervention.seed": int_at_least(0),
    },
    "build-pairs": {
        **_MODEL, **_MESH, **_SAMPLING, **_POLICY, **_JUDGE,
        "tokenizer": optional_dir,
        "prompts": non_empty_string,
        "out": output_dir,
        "triggers_file": optional_file,
        "intervention.rounds": int_at_least(1),
        "intervention.max_generations_per_prompt": int_at_least(1),
        "intervention.chunk_prompts": int_at_least(1),
        "intervention.benign_candidates": int_at_least(0),
        "intervention.seed": int_at_least(0),
    },
    "csr": {
        **_MODEL, **_MESH, **_SAMPLING, **_POLICY, **_JUDGE,
        "tokenizer": optional_dir,
        "out": output_dir,
        "csr.trajectories": non_empty_string,
        "csr.num_samples": int_at_least(1),
        "csr.mu": number_in(0, 1),
        "csr.eta": number_in(0, 1),
        "csr.window": tokens(1),
        "csr.granularity": one_of("token", "sentence"),
        "csr.token_stride": int_at_least(1),
        "csr.seed": int_at_least(0),
        "csr.kind": one_of("", "harmful", "benign"),
    },
    "eval": {
        **_MODEL, **_MESH, **_SAMPLING, **_POLICY, **_JUDGE,
        "tokenizer": optional_dir,
        "benchmarks": non_empty_string,  # name=path pairs: parsed and checked by the eval stage's loader
        "limit": int_at_least(0, " (0 = all items)"),
        "samples_per_prompt": int_at_least(1),
        "samples_per_benchmark": lambda v: per_benchmark_ints(v, "samples_per_benchmark"),
        "max_new_tokens_per_benchmark": lambda v: per_benchmark_ints(v, "max_new_tokens_per_benchmark", MAX_TOKENS),
        "wildjailbreak.sample": int_at_least(0, " (0 = every row)"),
        "wildjailbreak.seed": int_at_least(0),
        "gpqa.seed": int_at_least(0),
        "aime.years": aime_years,
        "xstest.judge": one_of("llm", "string_match"),
        "code.workers": int_at_least(1),
        "code.timeout": number_in(0, low_open=True),
        "num_shards": int_at_least(0, " (0 = one part per JAX process)"),
        "shard": int_at_least(-1, " (-1 = the JAX process index)"),
        "merge": boolean,
        "compare": lambda v: None if isinstance(v, str) else "comma-separated eval output directories or ''",
        "seed": int_at_least(0),
        "train_prompts": file_list,
        "ngram": int_at_least(1),
        "out": output_dir,
    },
}
# eval with merge=True or compare=...: no model, no benchmarks; only these are read
_EVAL_COLLECT_ONLY = ("merge", "compare", "out")
RULES["demo"] = {"out": output_dir, "seed": int_at_least(0)}
# plan: the train rules less what only a run reads (module docstring)
_PLAN_SKIPS = ("tokenizer", "data.pairs", "reference.cache_dir", "train.out")
RULES["plan"] = {**{name: check for name, check in RULES["train"].items() if name not in _PLAN_SKIPS},
                 "model.init": plan_model_spec}


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


def settings_problems(stage: str, config) -> list[str]:
    """Every problem with the stage's settings, one line each (empty when all are fine)."""
    problems = []
    for name, value in _leaves(config):
        if isinstance(value, float) and not math.isfinite(value):
            problems.append(f"config.{name} is {value}; expected a finite number")
        elif any(_is_int(v) and abs(v) > INT_LIMIT for v in (value if isinstance(value, (tuple, list)) else (value,))):
            problems.append(f"config.{name} is {_clipped(value)}; expected integers of at most 2**31 - 1 ({INT_LIMIT:,})")
    flagged = {p.split(" ", 1)[0] for p in problems}
    http_policy = _get(config, "policy.backend") == "http" and "policy.backend" in RULES.get(stage, {})
    if http_policy:  # the served model samples; model.init is only a tokenizer source, if given
        for name in ("policy.base_url", "policy.model"):
            if not isinstance(_get(config, name), str) or not _get(config, name).strip():
                problems.append(f"config.{name} is {_get(config, name)!r}; expected a non-empty string with "
                                "policy.backend 'http'")
    rules = RULES.get(stage, {})
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


def validate_settings(stage: str, config) -> None:
    """Raise SettingsError naming the first bad setting (and how many more there are)."""
    problems = settings_problems(stage, config)
    if problems:
        more = f" (and {len(problems) - 1} more setting{'s' if len(problems) > 2 else ''}: " \
               + ", ".join(p.split(" ", 1)[0] for p in problems[1:]) + ")" if len(problems) > 1 else ""
        raise SettingsError(problems[0] + more)
