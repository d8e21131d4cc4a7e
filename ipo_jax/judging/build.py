"""Settings -> a judge and a cue detector, and the check that the pattern judge is only used
where it can see anything.

* `build_judges(config)` -- (judge, detector) from the ``judge`` and ``detector`` sections
  (`ipo_jax.judging.config`).  With ``detector.backend = ''`` the detector uses the judge's
  settings; for ``llm`` / ``http`` both then share one chat backend (one model in memory, one
  concurrency limit).
* `build_chat(section, setting, mesh)` -- the `LocalChat` / `HttpChat` of one section (a local
  model is loaded by `ipo_jax.rollout.load_sampler`, as the policy's and serve's are).
* `check_judge_fits(config, prompts, where, roles)` -- the pattern judge and detector belong to
  the demo world: they key on its marker ``[request details withheld]``.  On prompts of which
  none carries a risky-prompt marker they would find nothing unsafe, so a stage that would run
  them there stops before any sampling with a ValueError (exit 2 from the CLI) saying which
  settings to give instead.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ipo_jax.checkpoint.init import tokenizer_dir_for
from ipo_jax.data.tokenizer import load_tokenizer
from ipo_jax.distributed import share_devices
from ipo_jax.http import json_object_setting
from ipo_jax.judging.chat import ChatBackend, HttpChat, LocalChat
from ipo_jax.judging.config import BACKENDS
from ipo_jax.judging.llm import LLMCueDetector, LLMJudge
from ipo_jax.judging.pattern import (
    DEFAULT_RISKY_PROMPT_PATTERNS,
    PatternCueDetector,
    PatternJudge,
    any_prompt_is_marked,
    load_pattern_file,
)
from ipo_jax.judging.prompts import JudgePrompts
from ipo_jax.judging.records import CueDetector, Judge
from ipo_jax.rollout.local import load_sampler
from ipo_jax.sharding import make_mesh

HTTP_EXAMPLE = ("--config.judge.backend=http --config.judge.base_url=http://localhost:8000/v1 "
                "--config.judge.model=<served judge model>")
LLM_EXAMPLE = "--config.judge.backend=llm --config.judge.model=hf:<judge model dir>"


def _backend(section, setting: str) -> str:
    backend = section.backend
    if backend not in BACKENDS:
        raise ValueError(f"{setting}.backend is {backend!r}; expected one of {', '.join(map(repr, BACKENDS))}")
    return backend


def build_chat(section, setting: str = "judge", mesh: dict | None = None) -> ChatBackend:
    """The chat backend of an ``llm`` or ``http`` section."""
    backend = _backend(section, setting)
    if not section.model:
        raise ValueError(f"{setting}.backend {backend!r} needs {setting}.model")
    if backend == "http":
        if not section.base_url:
            raise ValueError(f"{setting}.backend 'http' needs {setting}.base_url (e.g. http://localhost:8000/v1)")
        return HttpChat(section.base_url, section.model, api_key_env=section.api_key_env, timeout=section.timeout,
                        max_retries=section.max_retries, backoff=section.backoff, max_backoff=section.max_backoff,
                        concurrency=section.concurrency, max_tokens=section.max_tokens,
                        extra_body=json_object_setting(section.get("extra_body", "") or "", f"{setting}.extra_body"))
    if backend == "llm":
        tokenizer = load_tokenizer(tokenizer_dir_for(section.tokenizer, section.model))
        # this process's devices: with several processes each judges its own share
        device_mesh = make_mesh(dict(mesh), devices=share_devices()) if mesh is not None else None
        sampler = load_sampler(section.model, tokenizer, mesh=device_mesh, batch_size=section.batch_size,
                               max_prompt_length=section.max_prompt_length)
        return LocalChat(sampler, tokenizer, name=f"llm:{section.model}", max_tokens=section.max_tokens,
                         answer_directly=section.answer_directly)
    raise ValueError(f"{setting}.backend 'pattern' has no chat model")


def _prompts(section, setting: str) -> JudgePrompts:
    return JudgePrompts.from_files(section.prompts_file, section.few_shot_file, setting=setting)


def build_judges(config) -> tuple[Judge, CueDetector]:
    """(judge, cue detector) of the config's ``judge`` / ``detector`` sections."""
    j = config.judge
    mesh = config.get("mesh")
    d = config.get("detector")
    same = d is None or not d.backend
    backend = _backend(j, "judge")
    chat = None
    if backend == "pattern":
        judge = PatternJudge.from_file(j.patterns_file) if j.patterns_file else PatternJudge()
    else:
        prompts = _prompts(j, "judge")  # a bad prompts file fails before a model loads
        chat = build_chat(j, "judge", mesh)
        judge = LLMJudge(chat, prompts=prompts)
    section, setting = (j, "judge") if same else (d, "detector")
    if _backend(section, setting) == "pattern":
        detector = PatternCueDetector.from_file(section.patterns_file) if section.patterns_file else PatternCueDetector()
    else:
        prompts = _prompts(section, setting)
        detector = LLMCueDetector(chat if same and chat is not None else build_chat(section, setting, mesh),
                                  prompts=prompts)
    return judge, detector


def _pattern_sections(config, roles: Sequence[str]) -> list[tuple[str, Any]]:
    """The (setting, section) pairs of `roles` that resolve to the pattern backend."""
    out = []
    for role in roles:
        section = config.get(role)
        if role == "detector" and (section is None or not section.backend):
            continue  # the judge's settings: checked as the judge
        if section is not None and section.backend == "pattern":
            out.append((role, section))
    return out


def check_judge_fits(config, prompts: Sequence[str], where: str, roles: Sequence[str] = ("judge", "detector")) -> None:
    """Raise ValueError when a pattern judge / detector of `roles` would run on `prompts` none
    of which carries its risky-prompt marker (module docstring).  `where` names the prompts
    (a file, a set of benchmarks) in the message.  An unknown backend is reported too."""
    for role in roles:
        section = config.get(role)
        if section is not None and (role == "judge" or section.backend):
            _backend(section, role)
    prompts = list(prompts)
    for role, section in _pattern_sections(config, roles):
        markers = DEFAULT_RISKY_PROMPT_PATTERNS
        if section.patterns_file:
            markers = load_pattern_file(section.patterns_file).get("risky_prompt_patterns", markers)
        if not markers or not prompts:  # an empty marker list makes every prompt risky: the user chose
            continue
        if not any_prompt_is_marked(prompts, markers):
            shown = ", ".join(markers)
            raise ValueError(
                f"{where}: none of the {len(prompts)} prompts carries the demo world's marker ({shown}), so the "
                f"pattern {role} ({role}.backend='pattern', the demo world's offline judge) would find nothing unsafe; "
                f"give a real judge, e.g. {HTTP_EXAMPLE} (or {LLM_EXAMPLE})"
            )


__all__ = ["HTTP_EXAMPLE", "LLM_EXAMPLE", "build_chat", "build_judges", "check_judge_fits"]
