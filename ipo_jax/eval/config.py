"""The `eval` config: its sections as dataclasses whose fields carry default, help and range check
(ipo_jax/settings.py), the ConfigDict built from them (`base_config`) and the stage's validation
rules (registered with ipo_jax/validation.py).  The model, sampling, sampler and mesh sections are
the policy's (ipo_jax/rollout/config.py) and the judge section the judging package's
(ipo_jax/judging/config.py), the same the pipeline config uses, so one judge setting serves both.
`ipo-jax eval --help` prints these fields with their help.

Per-benchmark settings are ``name=value`` lists (`parse_per_benchmark`), keyed by the names in
``benchmarks`` (a jsonl file's key is its file stem, the label the report uses)."""

from __future__ import annotations

import dataclasses
import re

import ml_collections

from ipo_jax.judging.config import add_judge_sections, judge_help, judge_rules
from ipo_jax.rollout.config import add_policy_sections, policy_help, policy_rules
from ipo_jax.settings import (
    INT_LIMIT, MAX_TOKENS, add_fields, any_string, boolean, help_of, int_at_least, non_empty_string, number_in,
    one_of, rules_of, section, setting,
)
from ipo_jax.validation import file_list, optional_dir, output_dir, register_rules

DEFAULT_MAX_NEW_TOKENS = 32768  # the reasoning evaluations: long R1-style traces must not be cut short


def per_benchmark_ints(setting_name: str, high: int = INT_LIMIT):
    """The check of a 'name=n,...' list with integers from 1 to `high` (benchmark names are checked
    against the run's benchmarks later)."""
    expected = f"name=integer[,name=integer...] with integers from 1 to {high:,} (e.g. aime=16,gpqa=4), or ''"

    def check(v):
        if not isinstance(v, str):
            return expected
        try:
            values = parse_per_benchmark(v, setting_name)
        except PerBenchmarkError:
            return expected
        return expected if any(n > high for n in values.values()) else None
    return check


def aime_years(v):
    if not isinstance(v, str) or not all(re.fullmatch(r"\s*\d{4}\s*", y) for y in v.split(",") if y.strip()):
        return "comma-separated four-digit years such as '2024' or '2024,2025' ('' = every AIME file)"
    return None


@dataclasses.dataclass(frozen=True)
class EvalSettings:
    """The eval stage's top-level fields."""

    tokenizer: str = setting("", "a tokenizer directory; '' = the HF model directory", optional_dir)
    benchmarks: str = setting(
        "", "name=path[,...]; names jailbreakbench, strongreject, wildjailbreak, xstest, aime, math500, gpqa, "
        "humaneval, jsonl. path: a file, a published-file directory or a `datasets` save_to_disk directory; nothing "
        "is downloaded. jsonl: our own files (id, prompt, kind, optional reference)", non_empty_string)
    limit: int = setting(0, "> 0: the first N items of each file", int_at_least(0, " (0 = all items)"))
    samples_per_prompt: int = setting(1, "samples per prompt, every benchmark unless samples_per_benchmark names it",
                                      int_at_least(1))
    samples_per_benchmark: str = setting("", "name=n[,name=n...], e.g. 'aime=16,gpqa=4,humaneval=5' (capability = "
                                         "pass@1 over n)", per_benchmark_ints("samples_per_benchmark"))
    max_new_tokens_per_benchmark: str = setting(
        "", "name=tokens[,...], e.g. 'xstest=8192'; others get sampling.max_new_tokens",
        per_benchmark_ints("max_new_tokens_per_benchmark", MAX_TOKENS))
    seed: int = setting(0, "the sampling seed", int_at_least(0))
    # Splitting a run: each part evaluates every num_shards-th item of each benchmark and writes
    # <out>/parts/part-<shard>-of-<num_shards>/; when all parts are there the part that finishes last
    # merges them into <out> (or run once more with merge=True).
    num_shards: int = setting(0, "parts the run is split into; 0 = one part per JAX process (jax.process_count(); "
                              "1 on a single host = no split)", int_at_least(0, " (0 = one part per JAX process)"))
    shard: int = setting(-1, "this part's index with num_shards > 0 (independent runs); -1 = jax.process_index()",
                         int_at_least(-1, " (-1 = the JAX process index)"))
    merge: bool = setting(False, "True: generate nothing; merge the parts under <out>/parts into <out>", boolean)
    compare: str = setting("", "comma-separated eval output dirs: generate nothing; one paper table + plot of them "
                           "in <out>", any_string("comma-separated eval output directories or ''"))
    train_prompts: str = setting("", "comma-separated JSONL files (prompt field) the model trained on: "
                                 "contamination check", file_list)
    ngram: int = setting(8, "word n-gram length of the contamination check", int_at_least(1))
    label: str = setting("", "the model's name in the report ('' = model.init)")
    out: str = setting("runs/eval", "the output directory", output_dir)


@dataclasses.dataclass(frozen=True)
class WildJailbreakSettings:
    sample: int = setting(0, "> 0: a seeded random sample of N adversarial harmful prompts (0 = all rows)",
                          int_at_least(0, " (0 = every row)"))
    seed: int = setting(0, "the sample's seed", int_at_least(0))


@dataclasses.dataclass(frozen=True)
class AimeSettings:
    years: str = setting("", "the AIME year(s) an aime directory contributes, by the year in the file names: "
                         "'2024', '2024,2025' (2025 = both halves, aime2025-I and -II); '' = every aime* file there. "
                         "The report lists the files read.", aime_years)


@dataclasses.dataclass(frozen=True)
class GpqaSettings:
    seed: int = setting(0, "the seed of GPQA's option shuffle (the correct answer's letter follows it)",
                        int_at_least(0))


@dataclasses.dataclass(frozen=True)
class XstestSettings:
    judge: str = setting("llm", "llm: 3-class LLM classifier via the judge's chat model (needs judge.backend llm or "
                         "http); string_match: refusal phrase at the answer's start, reported as 'XSTest (string "
                         "match)'", one_of("llm", "string_match"))


@dataclasses.dataclass(frozen=True)
class CodeSettings:
    """HumanEval's sandbox (ipo_jax/eval/sandbox.py run_code)."""

    workers: int = setting(4, "HumanEval: sandboxed test subprocesses in parallel", int_at_least(1))
    timeout: float = setting(10.0, "HumanEval: seconds per program (then it is killed: status timeout)",
                             number_in(0, low_open=True))
    memory_mb: int = setting(1024, "HumanEval: memory limit of one program and its children, in MiB",
                             int_at_least(1))
    max_disk_mb: int = setting(64, "HumanEval: size of one program's work directory, in MiB", int_at_least(1))


SECTIONS = {"wildjailbreak": WildJailbreakSettings, "aime": AimeSettings, "gpqa": GpqaSettings,
            "xstest": XstestSettings, "code": CodeSettings}


def base_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    add_policy_sections(c)  # model, sampling (temperature 0.6, top-p 0.95), sampler, mesh (the model is sharded on it)
    add_judge_sections(c, detector=False)  # eval judges; it detects no cues
    c.sampling.max_new_tokens = DEFAULT_MAX_NEW_TOKENS  # every benchmark's budget unless max_new_tokens_per_benchmark names it
    add_fields(c, EvalSettings)
    for name, settings_type in SECTIONS.items():
        setattr(c, name, section(settings_type))
    return c


RULES = {"eval": {**policy_rules(), **judge_rules(detector=False), **rules_of(EvalSettings),
                  **{k: v for name, t in SECTIONS.items() for k, v in rules_of(t, name).items()}}}
register_rules("eval", RULES["eval"])


def field_help() -> dict[str, str]:
    """{'code.timeout': help text, ...} for `ipo-jax eval --help`."""
    return {**policy_help(), **judge_help(detector=False), **help_of(EvalSettings),
            **{k: v for name, t in SECTIONS.items() for k, v in help_of(t, name).items()},
            "sampling.max_new_tokens": "every benchmark's budget unless max_new_tokens_per_benchmark names it"}


class PerBenchmarkError(ValueError):
    """A malformed ``name=value`` list; the message names the setting."""


def parse_per_benchmark(spec: str, setting: str, *, minimum: int = 1) -> dict[str, int]:
    """'name=n,name=n' -> {name: n}; each n an integer >= `minimum`.  Names are checked against the
    run's benchmarks by the caller (`check_per_benchmark_names`)."""
    out: dict[str, int] = {}
    for part in filter(None, (p.strip() for p in (spec or "").split(","))):
        name, sep, value = part.partition("=")
        name, value = name.strip(), value.strip()
        try:
            number = int(value)
        except ValueError:
            number = None
        if not sep or not name or number is None or number < minimum:
            raise PerBenchmarkError(f"config.{setting} entry {part!r}: expected name=integer with integer >= {minimum} "
                                    f"(e.g. aime=16)")
        if name in out:
            raise PerBenchmarkError(f"config.{setting} names {name!r} twice")
        out[name] = number
    return out


def check_per_benchmark_names(values: dict[str, int], setting: str, labels) -> None:
    unknown = sorted(set(values) - set(labels))
    if unknown:
        raise PerBenchmarkError(f"config.{setting} names {', '.join(map(repr, unknown))}, which is not among the "
                                f"run's benchmarks ({', '.join(labels)})")


__all__ = ["DEFAULT_MAX_NEW_TOKENS", "PerBenchmarkError", "RULES", "SECTIONS", "base_config",
           "check_per_benchmark_names", "field_help", "parse_per_benchmark"]
