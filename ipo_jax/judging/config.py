"""The judge and cue-detector settings (the ``judge`` and ``detector`` sections of the pipeline and
eval configs), every field with its default.  `ipo_jax.judging.build` reads them."""

from __future__ import annotations

import ml_collections

BACKENDS = ("pattern", "llm", "http")


def add_judge_sections(c: ml_collections.ConfigDict, *, detector: bool = True) -> ml_collections.ConfigDict:
    """Add the ``judge`` (and, with `detector`, the ``detector``) section to `c`; returns `c`."""
    c.judge = ml_collections.ConfigDict()
    # pattern: the demo world's offline judge (refused on prompts without its marker), llm: a local
    # checkpoint through our sampler, http: an OpenAI-compatible endpoint (e.g. vLLM)
    c.judge.backend = "pattern"  # pattern (the demo world's), llm (a local checkpoint) or http (an OpenAI-compatible endpoint)
    c.judge.patterns_file = ""  # pattern: JSON with pattern lists overriding the defaults
    c.judge.model = ""  # llm: 'hf:<dir>' / 'orbax:<dir>' / 'preset:<name>'; http: the served model's name
    # llm: tokenizer directory ('' = the HF model directory); http: optional, the served judge's tokenizer,
    # used only to count judge prompt tokens for the context check ('' = estimated at 3 characters per token)
    c.judge.tokenizer = ""
    c.judge.base_url = ""  # http: e.g. http://localhost:8000/v1
    c.judge.api_key_env = "OPENAI_API_KEY"  # http: the variable holding the key (never logged)
    c.judge.timeout = 30.0  # http: seconds per attempt
    c.judge.max_retries = 4  # http: retries after the first attempt (timeouts, connection errors, 5xx, 429)
    c.judge.backoff = 1.0  # http: seconds before the first retry, doubled each time
    c.judge.max_backoff = 30.0  # http: cap on one wait (also on a server's Retry-After)
    c.judge.concurrency = 8  # http: requests in flight at once
    c.judge.max_tokens = 1024  # llm / http: reply budget; enough for a thinking judge to reason, then answer
    # http: a JSON object merged into each request, e.g. '{"chat_template_kwargs": {"enable_thinking": false}}'
    c.judge.extra_body = ""
    c.judge.prompts_file = ""  # llm / http: JSON {"reasoning": ..., "answer": ..., "cue": ...}: system prompts
    c.judge.few_shot_file = ""  # llm / http: JSONL few-shot examples (format: ipo_jax/judging/prompts.py)
    c.judge.answer_directly = True  # llm: close an open <think> so the judge answers at once
    c.judge.batch_size = 8  # llm: sampler batch
    c.judge.max_prompt_length = 4096  # llm: the longest judge prompt, in tokens
    if detector:
        c.detector = ml_collections.ConfigDict(c.judge.to_dict())
        c.detector.backend = ""  # '' = the judge's settings (llm / http: the same model, shared); else as judge.*
    # llm / http: the stage stops (exit 5) when more than this share of one chunk's judge and cue-detector
    # requests fail, or when the first batch fails entirely (ipo_jax/judging/guard.py)
    c.judge.max_error_share = 0.05
    return c


__all__ = ["BACKENDS", "add_judge_sections"]
