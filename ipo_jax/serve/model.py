"""The model behind `ipo-jax serve`: the sampler, its tokenizer, the names it answers to and the
limits every request is checked against (`ServedModel`); its loading (`load_served_model`) and
the settings checked before anything loads (`check_served_settings`); and the per-token
log-probabilities a request with ``logprobs`` gets (`ServedModel.score`, one scoring forward
pass over prompt + completion: the model's raw log-softmax, as vLLM's default
``logprobs-mode raw_logprobs``, not the temperature / top-p filtered distribution).
"""

from __future__ import annotations

import dataclasses
import functools
import os
import threading
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from ipo_jax.buckets import bucket_length, power_of_two_buckets
from ipo_jax.checkpoint.init import tokenizer_dir_for
from ipo_jax.data.tokenizer import THINK_CLOSE, THINK_OPEN, encode_text, load_tokenizer, render_prompt
from ipo_jax.rollout.local import load_sampler
from ipo_jax.sharding import make_mesh
from ipo_jax.validation import model_spec

REASONING_PARSERS = ("auto", "deepseek_r1", "qwen3", "none")


@dataclasses.dataclass(frozen=True)
class TokenScores:
    """Per completion token: its log-probability and the `top` most likely ids with theirs."""

    logprobs: list[float]
    top_ids: list[list[int]]
    top_logprobs: list[list[float]]


@dataclasses.dataclass
class ServedModel:
    """The sampler and what requests are checked against.

    max_prompt_tokens: the longest prompt taken (the sampler's largest prompt bucket, and at
    most ``context - 1``); context: ``max_model_len``, prompt + max_tokens must fit it;
    aliases: more names clients may send as ``model``; reasoning_parser: how a chat reply's
    ``<think>`` part is returned (`ipo_jax.serve.reasoning`); admit_tokens: decode steps per
    device call while the batch has free rows (`ipo_jax.serve.engine`; 0: the sampler's
    ``chunk_tokens`` always)."""

    sampler: Any
    tokenizer: Any
    name: str
    max_prompt_tokens: int
    context: int
    vocab_size: int
    aliases: tuple[str, ...] = ()
    reasoning_parser: str = "auto"
    admit_tokens: int = 0

    def __post_init__(self):
        self.max_prompt_tokens = min(self.max_prompt_tokens, self.context - 1)
        self._score_lock = threading.Lock()

    @property
    def names(self) -> tuple[str, ...]:
        return (self.name, *[a for a in self.aliases if a != self.name])

    @functools.cached_property
    def max_prompt_chars(self) -> int:
        """No prompt longer than this many characters fits `max_prompt_tokens` tokens: the
        longest vocabulary entry (bytes for a byte-level BPE, so at least its characters) times
        the token limit. Checked before tokenising, so a huge text is refused at once."""
        longest = max((len(piece) for piece in self.tokenizer.get_vocab()), default=1)
        return self.max_prompt_tokens * max(longest, 1)

    @functools.cached_property
    def thinks(self) -> bool:
        """The tokenizer knows ``<think>`` / ``</think>`` as single tokens (a reasoning model's)."""
        vocab = self.tokenizer.get_vocab()
        return THINK_OPEN in vocab and THINK_CLOSE in vocab

    def encode(self, text: str) -> list[int]:
        return encode_text(self.tokenizer, text)

    def decode(self, ids: Sequence[int]) -> str:
        return self.tokenizer.decode(list(ids), skip_special_tokens=True, clean_up_tokenization_spaces=False)

    def token_text(self, token: int) -> str:
        """One token as text, special tokens included (a logprobs entry's ``token``)."""
        return self.tokenizer.decode([int(token)], skip_special_tokens=False, clean_up_tokenization_spaces=False)

    def render_chat(self, messages: list[dict[str, str]], template_kwargs: dict[str, Any]) -> str:
        """The chat template's prompt text with its generation prompt (`render_prompt`)."""
        return render_prompt(self.tokenizer, messages, **template_kwargs)

    @property
    def scores(self) -> bool:
        """Whether `score` works: the sampler is ours (its compiled model is at hand)."""
        return hasattr(self.sampler, "programs")

    def score(self, prompt: Sequence[int], completion: Sequence[int], top: int) -> TokenScores:
        """Log-probabilities of `completion` after `prompt` and the `top` (>= 0) most likely ids at
        each of its positions: one forward pass, shapes bucketed to powers of two."""
        if not completion:
            return TokenScores([], [], [])
        tokens = [*prompt, *completion]
        span = bucket_length(len(completion), power_of_two_buckets(1 << 30))
        length = bucket_length(len(prompt) + span, power_of_two_buckets(1 << 30))
        row = np.zeros((1, length), np.int32)
        row[0, : len(tokens)] = tokens
        segment = (np.arange(length) < len(tokens)).astype(np.int32)[None]
        programs = self.sampler.programs
        with self._score_lock:  # one compiled program per shape, built once
            fn = _scorer(programs.graphdef, span, max(top, 1))
        chosen, top_lp, top_ids = fn(programs.state, row, np.arange(length, dtype=np.int32)[None], segment,
                                     np.int32(len(prompt) - 1))
        n = len(completion)
        chosen, top_lp, top_ids = np.asarray(chosen)[0, :n], np.asarray(top_lp)[0, :n, :top], np.asarray(top_ids)[0, :n, :top]
        return TokenScores(chosen.tolist(), top_ids.tolist(), top_lp.tolist())


@functools.lru_cache(maxsize=64)
def _scorer(graphdef, span: int, top: int):
    """The jitted scoring pass: log-softmax at `span` positions from `start`, the next token's
    log-probability there and the `top` best."""

    def run(state, tokens, positions, segment_ids, start):
        model = nnx.merge(graphdef, state)
        hidden, _ = model.hidden_states(tokens, positions, segment_ids)
        hidden = jax.lax.dynamic_slice_in_dim(hidden, start, span, axis=1)
        logprobs = jax.nn.log_softmax(model.logits(hidden), axis=-1)
        following = jax.lax.dynamic_slice_in_dim(tokens, start + 1, span, axis=1)
        chosen = jnp.take_along_axis(logprobs, following[..., None], axis=-1)[..., 0]
        top_lp, top_ids = jax.lax.top_k(logprobs, top)
        return chosen, top_lp, top_ids

    return jax.jit(run)


def load_served_model(model: str, *, tokenizer: str = "", name: str | Sequence[str] = "", mesh: str | None = None,
                      batch_size: int = 8, max_prompt_length: int = 4096, chunk_tokens: int = 32,
                      param_dtype: str = "float32", dtype: str = "float32", max_model_len: int | None = None,
                      reasoning_parser: str = "auto", admit_tokens: int = 4) -> ServedModel:
    """Load `model` (``hf:DIR`` / ``orbax:DIR`` / ``preset:NAME``) and its tokenizer (`tokenizer`,
    or the ``hf:`` directory's own) into a sampler (`ipo_jax.rollout.load_sampler`, as the
    pipeline's policy); ValueError for a bad spec before anything loads. `name`: the served
    name(s) (default: the `model` spec); `max_model_len`: the context enforced (default and
    at most the model's ``max_position_embeddings``); `admit_tokens`: decode steps per device
    call while the batch has free rows (at most `chunk_tokens`)."""
    mesh_shape = check_served_settings(model, tokenizer=tokenizer, mesh=mesh, batch_size=batch_size,
                                       max_prompt_length=max_prompt_length, chunk_tokens=chunk_tokens,
                                       max_model_len=max_model_len, reasoning_parser=reasoning_parser,
                                       admit_tokens=admit_tokens)
    tokenizer_dir = tokenizer_dir_for(tokenizer, model)
    tok = load_tokenizer(tokenizer_dir)
    device_mesh = make_mesh(mesh_shape) if mesh_shape else None
    # the sampler decodes its rows: stop strings need it, and a choice's text is its decode
    sampler = load_sampler(model, tok, mesh=device_mesh, param_dtype=param_dtype, dtype=dtype, batch_size=batch_size,
                           max_prompt_length=max_prompt_length, chunk_tokens=chunk_tokens, decodes_text=True)
    context = sampler.cfg.max_position_embeddings
    if max_model_len is not None and max_model_len > context:
        raise ValueError(f"--max-model-len {max_model_len} is more than the model's context "
                         f"(max_position_embeddings {context})")
    names = [name] if isinstance(name, str) else list(name)
    names = [n for n in names if n] or [model]
    return ServedModel(sampler, tok, names[0], max(sampler.buckets), max_model_len or context, sampler.cfg.vocab_size,
                       aliases=tuple(names[1:]), reasoning_parser=reasoning_parser,
                       admit_tokens=min(admit_tokens, chunk_tokens))


def check_served_settings(model: str, *, tokenizer: str = "", mesh: str | None = None, batch_size: int = 8,
                          max_prompt_length: int = 4096, chunk_tokens: int = 32, max_model_len: int | None = None,
                          reasoning_parser: str = "auto", admit_tokens: int = 4) -> dict[str, int] | None:
    """ValueError for a bad setting, before anything is bound or loaded; returns the mesh shape."""
    expected = model_spec(model)
    if expected:
        raise ValueError(f"--model {model!r}: expected {expected}")
    if tokenizer and not os.path.isdir(tokenizer):
        raise ValueError(f"--tokenizer {tokenizer!r}: expected an existing tokenizer directory")
    for flag, value in (("--batch-size", batch_size), ("--max-prompt-length", max_prompt_length),
                        ("--chunk-tokens", chunk_tokens), ("--admit-tokens", admit_tokens)):
        if value < 1:
            raise ValueError(f"{flag} is {value}; expected an integer >= 1")
    if max_model_len is not None and max_model_len < 2:
        raise ValueError(f"--max-model-len is {max_model_len}; expected an integer >= 2")
    if reasoning_parser not in REASONING_PARSERS:
        raise ValueError(f"--reasoning-parser {reasoning_parser!r}: expected one of {', '.join(REASONING_PARSERS)}")
    mesh_shape = _mesh_shape(mesh) if mesh else None
    tokenizer_dir_for(tokenizer, model)  # ModelSpecError (a ValueError) for a preset without one
    return mesh_shape


def _mesh_shape(text: str) -> dict[str, int]:
    shape = {}
    for part in text.split(","):
        axis, sep, size = part.partition("=")
        try:
            if not sep:
                raise ValueError
            shape[axis.strip()] = int(size)
        except ValueError:
            raise ValueError(f"--mesh {text!r}: expected axis=size pairs such as 'data=-1,tensor=2'") from None
    return shape
