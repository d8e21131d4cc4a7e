"""The judge and cue-detector settings (the ``judge`` and ``detector`` sections of the pipeline and
eval configs): `JudgeSettings`, whose fields carry default, help and range check
(ipo_jax/settings.py).  `ipo_jax.judging.build` reads them; `HttpChat` takes its defaults from them."""

from __future__ import annotations

import dataclasses

import ml_collections

from ipo_jax.settings import (
    boolean,
    help_of,
    http_retry_settings,
    int_at_least,
    number_in,
    one_of,
    rules_of,
    section,
    setting,
    tokens,
)
from ipo_jax.validation import optional_file

BACKENDS = ("pattern", "llm", "http")


@dataclasses.dataclass(frozen=True)
class JudgeSettings:
    """The judge (and, copied, the cue detector: its backend '' = the judge's settings)."""

    backend: str = setting("pattern", "pattern (the demo world's offline judge, refused on prompts without its "
                           "marker), llm (a local checkpoint through our sampler) or http (an OpenAI-compatible "
                           "endpoint, e.g. vLLM)", one_of(*BACKENDS))
    patterns_file: str = setting("", "pattern: JSON with pattern lists overriding the defaults", optional_file)
    model: str = setting("", "llm: 'hf:<dir>' / 'orbax:<dir>' / 'preset:<name>'; http: the served model's name")
    tokenizer: str = setting("", "llm: tokenizer directory ('' = the HF model directory); http: optional, the served "
                             "judge's tokenizer, used only to count judge prompt tokens for the context check "
                             "('' = estimated at 3 characters per token)")
    base_url: str = setting("", "http: e.g. http://localhost:8000/v1")
    api_key_env: str = setting("OPENAI_API_KEY", "http: the variable holding the key (never logged)")
    timeout: float = setting(30.0, "http: seconds per attempt", number_in(0, low_open=True))
    max_retries: int = http_retry_settings()["max_retries"]
    backoff: float = http_retry_settings()["backoff"]
    max_backoff: float = http_retry_settings()["max_backoff"]
    concurrency: int = setting(8, "http: requests in flight at once", int_at_least(1))
    max_tokens: int = setting(1024, "llm / http: reply budget; enough for a thinking judge to reason, then answer",
                              tokens(1))
    extra_body: str = setting("", "http: a JSON object merged into each request, e.g. "
                              '\'{"chat_template_kwargs": {"enable_thinking": false}}\'')
    prompts_file: str = setting("", 'llm / http: JSON {"reasoning": ..., "answer": ..., "cue": ...}: system prompts')
    few_shot_file: str = setting("", "llm / http: JSONL few-shot examples (format: ipo_jax/judging/prompts.py)")
    answer_directly: bool = setting(True, "llm: close an open <think> so the judge answers at once", boolean)
    batch_size: int = setting(8, "llm: sampler batch", int_at_least(1))
    max_prompt_length: int = setting(4096, "llm: the longest judge prompt, in tokens", tokens(1))
    max_error_share: float = setting(
        0.05, "llm / http: the stage stops (exit 5) when more than this share of one chunk's judge and cue-detector "
        "requests fail, or when the first batch fails entirely (ipo_jax/judging/guard.py)", number_in(0, 1))


_JUDGE_ONLY = ("max_error_share",)  # the stage's, so the judge section holds it, not the detector's
DETECTOR_BACKEND_HELP = "'' = the judge's settings (llm / http: the same model, shared); else as judge.*"


def add_judge_sections(c: ml_collections.ConfigDict, *, detector: bool = True) -> ml_collections.ConfigDict:
    """Add the ``judge`` (and, with `detector`, the ``detector``) section to `c`; returns `c`."""
    c.judge = section(JudgeSettings)
    if detector:
        c.detector = section(JudgeSettings, exclude=_JUDGE_ONLY, backend="")
    return c


def judge_rules(*, detector: bool = True) -> dict:
    """{'judge.timeout': check, ...}; the detector's fields are checked as the judge's, its backend may be ''."""
    rules = rules_of(JudgeSettings, "judge")
    if detector:
        rules.update(rules_of(JudgeSettings, "detector", exclude=_JUDGE_ONLY))
        rules["detector.backend"] = one_of("", *BACKENDS)
    return rules


def judge_help(*, detector: bool = True) -> dict[str, str]:
    texts = help_of(JudgeSettings, "judge")
    if detector:
        texts.update({k: v for k, v in help_of(JudgeSettings, "detector").items()
                      if k.rsplit(".", 1)[1] not in _JUDGE_ONLY})
        texts["detector.backend"] = DETECTOR_BACKEND_HELP
    return texts


__all__ = ["BACKENDS", "JudgeSettings", "add_judge_sections", "judge_help", "judge_rules"]
