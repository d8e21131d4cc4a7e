"""Tokenising a conversation for SFT: the ids the model sees and the mask of the assistant tokens
that carry the loss.

Each assistant turn is tokenised as the model produces it when sampled: the conversation before
it rendered by the chat template with the generation prompt (`ipo_jax.data.tokenizer.encode_prompt`,
no loss), then the assistant's content tokenised on its own followed by the template's end-of-turn
text (`chat_eos_text`; loss on all of these). This is how pairs are tokenised for IPO
(ipo_jax/data/pairs.py), so the NLL of an SFT example and of an IPO pair's chosen side mean the
same thing. For a canonically formatted single turn the ids equal the template's tokenisation of
the whole conversation (tested on the real Qwen3 tokenizer).

Reasoning: a template whose generation prompt already opens the reasoning (DeepSeek-R1-Distill's
ends in `<think>\\n`) gets an assistant content that starts with `<think>` without its opening tag
(and the one newline after it), so the tag is not written twice; Qwen3's generation prompt does
not open it, so the content keeps its `<think>`.

Several assistant turns: the conversation is built turn by turn while the template renders each
turn's context as the ids built so far plus the new user (or system) text. A template that
rewrites earlier turns (Qwen3 and R1 drop the reasoning of earlier assistant turns) breaks that
prefix; the example then restarts from the template's rendering of the new context, so only the
later turns carry loss (counted as `history_rewritten`).
"""

from __future__ import annotations

import dataclasses

import numpy as np
from tqdm.auto import tqdm

from ipo_jax.data.tokenizer import THINK_OPEN, chat_eos_text, encode_text, render_prompt
from ipo_jax.sft.records import SftRecord


@dataclasses.dataclass(frozen=True)
class SftExample:
    id: str
    tokens: np.ndarray  # int32 [n]
    loss: np.ndarray  # bool [n]: token i is an assistant token (predicted from token i - 1, it carries loss)
    where: str = ""
    history_rewritten: bool = False  # earlier assistant turns lost their loss (module doc)

    def __len__(self) -> int:
        return len(self.tokens)


def assistant_text(prompt_text: str, content: str) -> str:
    """`content` as the completion after `prompt_text`: without its opening `<think>` (and the
    newline after it) when the generation prompt already ends with one (module doc)."""
    opened = prompt_text.rstrip(" \n").endswith(THINK_OPEN)
    stripped = content.lstrip()
    if not opened or not stripped.startswith(THINK_OPEN):
        return content
    rest = stripped[len(THINK_OPEN):]
    return rest[1:] if prompt_text.endswith("\n") and rest.startswith("\n") else rest


def tokenize_example(tokenizer, record: SftRecord, eos_text: str | None = None) -> SftExample:
    """The ids and assistant-token mask of one conversation (module doc)."""
    eos_ids = encode_text(tokenizer, chat_eos_text(tokenizer) if eos_text is None else eos_text)
    ids: list[int] = []
    mask: list[bool] = []
    rewritten = False
    for k, message in enumerate(record.messages):
        if message["role"] != "assistant":
            continue
        prompt_text = render_prompt(tokenizer, record.messages[:k])
        context = encode_text(tokenizer, prompt_text)
        if context[: len(ids)] != ids:  # the template rendered the earlier turns otherwise
            ids, mask, rewritten = [], [], True
        new = context[len(ids):]
        reply = encode_text(tokenizer, assistant_text(prompt_text, message["content"])) + eos_ids
        ids += new + reply
        mask += [False] * len(new) + [True] * len(reply)
    return SftExample(record.id, np.asarray(ids, np.int32), np.asarray(mask, bool), record.where, rewritten)


def tokenize_records(records: list[SftRecord], tokenizer) -> list[SftExample]:
    eos_text = chat_eos_text(tokenizer)
    return [tokenize_example(tokenizer, r, eos_text) for r in tqdm(records, desc="tokenize", unit="example", disable=None)]
