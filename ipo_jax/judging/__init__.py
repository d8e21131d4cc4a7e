"""Judging: safety verdicts on reasoning and answers, and the first compliance cue of a trace.

    records.py  Verdict, CueResult, JudgeRequest, CueRequest; the `Judge` / `CueDetector`
                protocols (core methods take a LIST); judge_all / detect_all / judge_trajectories
    pattern.py  the demo world's offline pattern judge and cue detector
    prompts.py  system prompts, few-shot examples (reasoning, answer and cue apart), message
                building, label and cue-index parsing, prompt / few-shot files
    chat.py     ChatBackend.complete(list of conversations) -> list[Reply]: LocalChat (our
                sampler, batched) and HttpChat (OpenAI-compatible, on `ipo_jax.http`'s transport:
                retries, concurrency, redaction)
    llm.py      LLMJudge(chat) and LLMCueDetector(chat)
    config.py   the judge / detector settings;  build.py  settings -> judge and detector (a local
                model through `ipo_jax.rollout.load_sampler`)

Imports nothing from `ipo_jax.pipeline` or `ipo_jax.eval`: both use it.
"""

from ipo_jax.judging.records import (
    LABELS,
    PARTS,
    CueDetector,
    CueRequest,
    CueResult,
    Judge,
    JudgeRequest,
    Verdict,
    detect_all,
    judge_all,
    judge_trajectories,
    trajectory_label,
)

__all__ = [
    "LABELS",
    "PARTS",
    "CueDetector",
    "CueRequest",
    "CueResult",
    "Judge",
    "JudgeRequest",
    "Verdict",
    "detect_all",
    "judge_all",
    "judge_trajectories",
    "trajectory_label",
]
