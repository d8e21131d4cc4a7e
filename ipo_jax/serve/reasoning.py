"""How a chat reply's reasoning is returned (``--reasoning-parser``), as vLLM's reasoning parsers
do: the ``<think>...</think>`` part goes to ``message.reasoning_content`` and the rest to
``message.content``.

* ``deepseek_r1`` -- everything before ``</think>`` is reasoning (a leading ``<think>`` dropped),
  also when the chat template opened ``<think>`` in the prompt (DeepSeek-R1-Distill's ends with
  ``<think>\\n``, so the reply starts inside it); a reply without ``</think>`` is reasoning only
  (``content`` null: cut off while thinking).
* ``qwen3`` -- a reply with ``</think>`` is split there; one without it is all content.
* ``auto`` (the default) -- ``none`` for a tokenizer without ``<think>`` / ``</think>`` tokens;
  else ``deepseek_r1`` when the prompt opened ``<think>`` or the reply starts with it, else
  ``qwen3``.
* ``none`` -- the reply as it is, inline, in ``content``.

`split_reasoning` splits a whole reply; `ReasoningStream` splits a growing one for streaming,
holding back a tail that may still become ``</think>`` (or a stop string).
"""

from __future__ import annotations

from ipo_jax.data.tokenizer import THINK_CLOSE, THINK_OPEN


def prompt_opens_thinking(prompt_text: str) -> bool:
    """The generation prompt ends inside an open ``<think>`` block."""
    return prompt_text.rfind(THINK_OPEN) > prompt_text.rfind(THINK_CLOSE)


def resolve_parser(parser: str, thinks: bool, opened: bool, text: str = "") -> str:
    """The parser `auto` stands for, given the tokenizer (`thinks`), the prompt and the reply so far."""
    if parser != "auto":
        return parser
    if not thinks:
        return "none"
    return "deepseek_r1" if opened or text.lstrip().startswith(THINK_OPEN) else "qwen3"


def split_reasoning(text: str, parser: str) -> tuple[str | None, str | None]:
    """(reasoning_content, content) of a whole reply under a resolved `parser`."""
    if parser == "none":
        return None, text
    before, found, after = text.partition(THINK_CLOSE)
    if found:
        return _strip_open(before), after
    if parser == "deepseek_r1":
        return _strip_open(before), None
    return None, text


def _strip_open(text: str) -> str:
    stripped = text.lstrip()
    return stripped[len(THINK_OPEN):] if stripped.startswith(THINK_OPEN) else text


def held_tail(text: str, markers) -> int:
    """How many characters at the end of `text` could begin one of `markers` (kept back while streaming)."""
    longest = 0
    for marker in markers:
        for size in range(min(len(marker) - 1, len(text)), longest, -1):
            if text.endswith(marker[:size]):
                longest = size
                break
    return longest


class ReasoningStream:
    """The deltas of one streamed chat choice: `update(text)` with the reply's text so far (only
    text that is safe to send: no partial stop string) returns (reasoning delta, content delta);
    `finish(text)` with the whole reply returns the rest."""

    def __init__(self, parser: str, thinks: bool, opened: bool):
        self.parser, self.thinks, self.opened = parser, thinks, opened
        self.sent_reasoning, self.sent_content = "", ""

    def _resolved(self, text: str) -> str:
        return resolve_parser(self.parser, self.thinks, self.opened, text)

    def update(self, text: str) -> tuple[str, str]:
        parser = self._resolved(text)
        if parser != "none":
            if THINK_OPEN.startswith(text.lstrip()) and not self.sent_content:
                return "", ""  # the reply may still open <think>
            if THINK_CLOSE not in text:
                text = text[: len(text) - held_tail(text, (THINK_CLOSE,))]
            if parser == "qwen3" and THINK_CLOSE not in text and not text.lstrip().startswith(THINK_OPEN):
                return self._deltas(None, text)
            if THINK_CLOSE not in text:  # still thinking
                return self._deltas(_strip_open(text), None)
        return self._deltas(*split_reasoning(text, parser))

    def finish(self, text: str) -> tuple[str, str]:
        return self._deltas(*split_reasoning(text, self._resolved(text)))

    def _deltas(self, reasoning: str | None, content: str | None) -> tuple[str, str]:
        out = []
        for value, attr in ((reasoning, "sent_reasoning"), (content, "sent_content")):
            sent = getattr(self, attr)
            if value is not None and value.startswith(sent) and len(value) > len(sent):
                setattr(self, attr, value)
                out.append(value[len(sent):])
            else:
                out.append("")
        return out[0], out[1]
