"""The `eval` config: every field with its default.  The model, sampling, sampler and mesh
sections are the policy's (ipo_jax/rollout/config.py) and the judge section the judging
package's (ipo_jax/judging/config.py), the same the pipeline config uses, so one judge setting
serves both.  `ipo-jax eval --help` prints these fields with their comments.

Per-benchmark settings are ``name=value`` lists (`parse_per_benchmark`), keyed by the names in
``benchmarks`` (a jsonl file's key is its file stem, the label the report uses)."""

from __future__ import annotations

import ml_collections

from ipo_jax.judging.config import add_judge_sections
from ipo_jax.rollout.config import add_policy_sections

DEFAULT_MAX_NEW_TOKENS = 32768  # the reasoning evaluations: long R1-style traces must not be cut short


def base_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    add_policy_sections(c)  # model, sampling (temperature 0.6, top-p 0.95), sampler, mesh (the model is sharded on it)
    add_judge_sections(c, detector=False)  # eval judges; it detects no cues
    c.tokenizer = ""  # a tokenizer directory; '' = the HF model directory
    c.sampling.max_new_tokens = DEFAULT_MAX_NEW_TOKENS  # every benchmark's budget unless max_new_tokens_per_benchmark names it
    # name=path[,...]; names jailbreakbench, strongreject, wildjailbreak, xstest, aime, math500, gpqa, humaneval, jsonl
    # path: a file, a published-file directory or a `datasets` save_to_disk directory; nothing is downloaded.
    # jsonl: our own files (id, prompt, kind, optional reference).
    c.benchmarks = ""
    c.limit = 0  # > 0: the first N items of each file
    c.samples_per_prompt = 1  # samples per prompt, every benchmark unless samples_per_benchmark names it
    c.samples_per_benchmark = ""  # name=n[,name=n...], e.g. 'aime=16,gpqa=4,humaneval=5' (capability = pass@1 over n)
    c.max_new_tokens_per_benchmark = ""  # name=tokens[,...], e.g. 'xstest=8192'; others get sampling.max_new_tokens
    c.seed = 0
    c.wildjailbreak = ml_collections.ConfigDict()
    c.wildjailbreak.sample = 0  # > 0: a seeded random sample of N adversarial harmful prompts (0 = all rows)
    c.wildjailbreak.seed = 0  # the sample's seed
    c.aime = ml_collections.ConfigDict()
    # the AIME year(s) an aime directory contributes, by the year in the file names: '2024', '2024,2025'
    # (2025 = both halves, aime2025-I and -II); '' = every aime* file there. The report lists the files read.
    c.aime.years = ""
    c.gpqa = ml_collections.ConfigDict()
    c.gpqa.seed = 0  # the seed of GPQA's option shuffle (the correct answer's letter follows it)
    c.xstest = ml_collections.ConfigDict()
    # llm: 3-class LLM classifier via the judge's chat model; string_match: refusal phrase at the answer's start
    # llm needs judge.backend llm or http; string_match is reported as 'XSTest (string match)'.
    c.xstest.judge = "llm"
    c.code = ml_collections.ConfigDict()
    c.code.workers = 4  # HumanEval: sandboxed test subprocesses in parallel
    c.code.timeout = 10.0  # HumanEval: seconds per program (then it is killed: status timeout)
    # Splitting a run: each part evaluates every num_shards-th item of each benchmark and writes
    # <out>/parts/part-<shard>-of-<num_shards>/; when all parts are there the part that finishes last
    # merges them into <out> (or run once more with merge=True).
    c.num_shards = 0  # 0 = one part per JAX process (jax.process_count(); 1 on a single host = no split)
    c.shard = -1  # this part's index with num_shards > 0 (independent runs); -1 = jax.process_index()
    c.merge = False  # True: generate nothing; merge the parts under <out>/parts into <out>
    c.compare = ""  # comma-separated eval output dirs: generate nothing; one paper table + plot of them in <out>
    c.train_prompts = ""  # comma-separated JSONL files (prompt field) the model trained on: contamination check
    c.ngram = 8  # word n-gram length of the contamination check
    c.label = ""  # the model's name in the report ('' = model.init)
    c.out = "runs/eval"
    return c


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


__all__ = ["DEFAULT_MAX_NEW_TOKENS", "PerBenchmarkError", "base_config", "check_per_benchmark_names",
           "parse_per_benchmark"]
