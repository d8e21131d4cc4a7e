"""A small, deterministic, fully offline tokenizer in the DeepSeek-R1-Distill style.

Owns:

* `build_tiny_tokenizer` -- a byte-level BPE trained with the `tokenizers` library on an
  in-memory corpus, wrapped as a `transformers.PreTrainedTokenizerFast` with an
  R1-Distill-style chat template.  For tiny CPU models, tests and the demo world.
* `save_tiny_tokenizer` -- ``save_pretrained``; reload with
  `ipo_jax.data.tokenizer.load_tokenizer` (same encodings, same chat template).
* The special-token strings (`BOS`, `EOS`, `PAD`, `USER`, `ASSISTANT`, `THINK_OPEN`,
  `THINK_CLOSE`), `SPECIAL_TOKENS` (their fixed id order) and `CHAT_TEMPLATE`.

Vocabulary.  Ids 0..6 are, in this order: ``<|begin▁of▁sentence|>`` (bos),
``<|end▁of▁sentence|>`` (eos), ``<|pad|>`` (pad), ``<|User|>``, ``<|Assistant|>``,
``<think>``, ``</think>`` -- each one id, never split, matched in any text (they are added
tokens).  Then the 256 byte-level symbols (so any text encodes and ``decode(encode(text)) ==
text`` for every Unicode string -- there is no unknown token), then the learned merges.
``vocab_size`` counts everything, so ``len(tokenizer) <= vocab_size`` (smaller when the corpus
runs out of pairs to merge).  Nothing is added on encode (no post-processor): the chat
template writes bos itself, as `encode_prompt` expects.

Special vs. regular, as in DeepSeek-R1-Distill's tokenizer.json: bos, eos and pad are
*special* (``skip_special_tokens=True`` drops them from decoded text); ``<|User|>``,
``<|Assistant|>``, ``<think>`` and ``</think>`` are *regular* added tokens (``special:
false``): single ids that ``skip_special_tokens=True`` keeps in decoded text, so a decoded
completion still carries its ``</think>`` for `ipo_jax.rollout.split_completion`.  The real R1 tokenizer writes
the role/bos/eos markers with full-width bars (U+FF5C); here they use the ASCII ``|``, with
U+2581 ``▁`` inside bos/eos as R1 has.

Determinism.  The `tokenizers` BPE trainer has no randomness; its known run-to-run variation
(huggingface/tokenizers#1794) comes from ids given lazily, in hash-map order, to symbols not in
the initial alphabet (and to continuing-subword / end-of-word variants).  Here the initial
alphabet is the full 256-symbol byte-level alphabet, the alphabet is not limited, and no
prefix/suffix is used, so every symbol id is fixed before training; merges are chosen by
count with ties broken by the (fixed) pair ids, and counts are sums, so neither the thread
count nor the order of the corpus changes the result.  The same corpus (as a multiset of
strings) and `vocab_size` give a byte-identical ``tokenizer.json`` -- in other processes
too, which matters because every host of a multi-host run builds its own copy.  The tests
check this across processes, thread counts and corpus orders.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Iterable

BOS = "<|begin\u2581of\u2581sentence|>"
EOS = "<|end\u2581of\u2581sentence|>"
PAD = "<|pad|>"
USER = "<|User|>"
ASSISTANT = "<|Assistant|>"
THINK_OPEN = "<think>"
THINK_CLOSE = "</think>"

# Fixed order: these take ids 0, 1, 2, ... .
SPECIAL_TOKENS = (BOS, EOS, PAD, USER, ASSISTANT, THINK_OPEN, THINK_CLOSE)
# Added tokens that decode like text (not dropped by skip_special_tokens), as in R1-Distill.
REGULAR_ADDED_TOKENS = (USER, ASSISTANT, THINK_OPEN, THINK_CLOSE)

_BYTE_ALPHABET_SIZE = 256
MIN_VOCAB_SIZE = len(SPECIAL_TOKENS) + _BYTE_ALPHABET_SIZE

# R1-Distill-style template, simplified: bos; the system message content(s), if any, up
# front (as R1 collects its system prompt); then "<|User|>" + content per user turn and
# "<|Assistant|>" + content + eos per assistant turn.  The generation prompt opens the
# reasoning: "<|Assistant|><think>\n", so a completion starts inside the reasoning
# ("...</think>\n\nanswer").  Unlike R1's, assistant content is written verbatim (R1 drops
# everything up to "</think>" from earlier assistant turns), so the conversation with assistant
# content "<think>\n" + completion renders as exactly prompt + completion + eos.
CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{%- for message in messages %}"
    "{%- if message['role'] == 'system' %}{{ message['content'] }}{%- endif %}"
    "{%- endfor %}"
    "{%- for message in messages %}"
    "{%- if message['role'] == 'user' %}{{ '" + USER + "' + message['content'] }}"
    "{%- elif message['role'] == 'assistant' %}{{ '" + ASSISTANT + "' + message['content'] + '" + EOS + "' }}"
    "{%- endif %}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{ '" + ASSISTANT + THINK_OPEN + "\\n' }}{%- endif %}"
)


def _train(corpus: Iterable[str], vocab_size: int):
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=0,
        special_tokens=[AddedToken(t, normalized=False) for t in SPECIAL_TOKENS],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator((text for text in corpus if text), trainer=trainer)
    # The trainer marks every token it is given as special; make the role and think markers
    # regular added tokens (still single ids, still matched in text) as R1-Distill has them.
    data = json.loads(tokenizer.to_str())
    for entry in data["added_tokens"]:
        if entry["content"] in REGULAR_ADDED_TOKENS:
            entry["special"] = False
    return Tokenizer.from_str(json.dumps(data, ensure_ascii=False))


def build_tiny_tokenizer(corpus: Iterable[str], vocab_size: int = 512):
    """A byte-level BPE tokenizer of at most `vocab_size` tokens trained on `corpus`.

    Returns a `transformers.PreTrainedTokenizerFast` with bos/eos/pad set, ``<think>`` /
    ``</think>`` as single regular tokens, and the R1-Distill-style `CHAT_TEMPLATE`.
    Deterministic (see the module docstring).  `vocab_size` includes the 7 special tokens and
    the 256 byte symbols, so it must be at least `MIN_VOCAB_SIZE` (263).
    """
    from transformers import PreTrainedTokenizerFast

    if isinstance(corpus, str):
        raise TypeError("corpus must be an iterable of strings, not a single string")
    if vocab_size < MIN_VOCAB_SIZE:
        raise ValueError(
            f"vocab_size={vocab_size} is too small: the {len(SPECIAL_TOKENS)} special tokens and "
            f"the {_BYTE_ALPHABET_SIZE} byte symbols need at least {MIN_VOCAB_SIZE}"
        )
    backend = _train(corpus, vocab_size)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token=BOS,
        eos_token=EOS,
        pad_token=PAD,
        clean_up_tokenization_spaces=False,
        model_max_length=1 << 30,
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    if len(tokenizer) > vocab_size:  # pragma: no cover - the trainer respects vocab_size
        raise AssertionError(f"tiny tokenizer has {len(tokenizer)} tokens, more than vocab_size={vocab_size}")
    return tokenizer


def save_tiny_tokenizer(tokenizer, out_dir: str | os.PathLike[str]) -> Path:
    """``tokenizer.save_pretrained(out_dir)``; returns the directory.  Reload it with
    `ipo_jax.data.tokenizer.load_tokenizer(out_dir)`."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer.save_pretrained(str(out))
    return out


__all__ = [
    "ASSISTANT",
    "BOS",
    "CHAT_TEMPLATE",
    "EOS",
    "MIN_VOCAB_SIZE",
    "PAD",
    "REGULAR_ADDED_TOKENS",
    "SPECIAL_TOKENS",
    "THINK_CLOSE",
    "THINK_OPEN",
    "USER",
    "build_tiny_tokenizer",
    "save_tiny_tokenizer",
]
