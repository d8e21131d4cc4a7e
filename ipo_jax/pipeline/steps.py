"""Reasoning steps: split a reasoning trace into sentences with exact character offsets, and
map sentence starts to token positions.

IPO works per sentence: the first compliance cue is a sentence, the trigger replaces a
sentence, and CSR is measured at sentence ends.  `split_sentences` returns `Sentence` records
whose ``start``/``end`` are offsets into the original text: ``text[s.start:s.end] == s.text``,
sentences come in order, never overlap, and what lies between two neighbours (and before the
first / after the last) is whitespace only.  No sentence is empty or starts/ends with
whitespace.

Rules (in the order they are applied):

1. Protected spans.  Nothing splits inside a fenced code block (a run of 3+ backticks or
   tildes up to the next identical run, or to the end of the text when unclosed) or inside
   inline code (`` `...` `` on one line).  A fenced block is a sentence of its own: there is a
   boundary right before its opening fence and right after its closing fence.
2. Paragraphs and lists.  A line break outside protected spans ends a sentence when the next
   line is blank (paragraph break), or when the next line or the current line starts with a
   list item or heading marker: ``-``, ``*``, ``+``, ``•``, ``‣``, ``◦``, ``–``, ``1.``,
   ``1)``, ``(1)``, ``a.``, ``a)``, ``(a)`` or ``#``..``######``, followed by a space or tab.
   (So a list item ends at its line end even without a full stop.)  Any other single line
   break is plain whitespace: a wrapped line does not end a sentence.
3. Terminal punctuation.  A run of ``.`` ``?`` ``!`` ``…`` and the CJK stops ``。？！``,
   followed by any closing quotes / brackets / emphasis marks (``"'”’»)]}」』）】*_``), ends a
   sentence after those closers when the next character is whitespace or the end of the text.
   A CJK stop ends a sentence even with no whitespace after it.  Exceptions, where the run
   does **not** end a sentence:

   * dots (``.``, ``...``, ``…``) followed (after whitespace) by a lowercase letter -- the
     orthographic rule: an ellipsis inside a sentence ("Hmm... wait") and unknown
     abbreviations ("approx. five", "etc. and so on") stay in one sentence;
   * a single ``.`` after a known abbreviation that never ends a sentence (`ABBREVIATIONS`:
     ``e.g.``, ``i.e.``, ``vs.``, ``cf.``, ``Dr.``, ``Mr.``, ``et al.`` ...; compared without
     case), whatever follows;
   * a single ``.`` after a list number or letter that opens its line ("1. First",
     "2.3. Detail", "a. Item");
   * ``?``/``!`` followed by a closing quote/bracket and then a lowercase word ("Stop!" she
     said) -- quoted speech continues the sentence.

   Decimal numbers ("3.14", "1,000.5"), version strings and file names never split because
   no whitespace follows their dots.

Known limits (kept on purpose; reasoning traces rarely hit them): an initialism at the end of
a clause before a capitalised word splits ("the U.S. Army" -> "the U.S." | "Army"), as does a
sentence-final "etc." correctly; inline numbered lists ("Steps: 1. Mix 2. Stir") split after
each number; LaTeX math is not protected (its dots are rarely followed by space + capital).

Why no library: neither ``pysbd`` nor ``nltk`` is installed in this offline environment; NLTK's
punkt also needs a separately downloaded model, and pysbd's ``char_span`` offsets are known to
drift on repeated substrings.  Neither knows code fences or markdown lists, which reasoning
traces are full of, so a small rule-based splitter with exact offsets is simpler to trust.

Token positions: `token_index_of_char` and `sentence_token_starts` use the offset mapping of
a fast tokenizer (``return_offsets_mapping=True``).  Byte-level BPE tokenizers glue the
space before a word to the word, so the token found for a sentence start usually begins with
the whitespace that separates it from the previous sentence; it never begins after the
sentence start.

Sampled ids: `token_boundary_at_char` finds where a split at a character of a *sampled*
completion falls in its ids (the pipeline's h), from prefix decodes of those ids, never by
re-tokenising the text; `text_in_context` gives an inserted sentence (a safety trigger) the
leading space its first token carries in running text.
"""

from __future__ import annotations

import bisect
import dataclasses
import os
import re
from collections.abc import Callable, Iterable, Sequence

# Abbreviations (lowercase, without their final dot) after which "." never ends a sentence.
ABBREVIATIONS = frozenset(
    {
        "e.g", "i.e", "vs", "cf", "viz", "approx", "incl", "esp", "resp", "ca",
        "mr", "mrs", "ms", "dr", "prof", "st", "sr", "jr", "mt", "gen", "col", "lt", "capt", "sgt", "rev",
        "fig", "figs", "eq", "eqs", "sec", "ch", "vol", "ref", "refs", "al", "dept",
    }
)

_DOTS = ".…"
_TERMINALS = ".?!…。？！"
_CJK_TERMINALS = "。？！"
_CLOSERS = "\"'”’»)]}」』）】*_"
_OPENERS = "\"'“‘«([{「『（【"

_FENCE = re.compile(r"(`{3,}|~{3,})[\s\S]*?(?:\1|\Z)")
_INLINE_CODE = re.compile(r"`[^`\n\x00]+`")
# A list item or heading marker at the start of a line, followed by a space or tab.
_LINE_MARKER = re.compile(
    r"[ \t]*(?:[-*+•‣◦–]|\d{1,3}(?:\.\d{1,3})*[.)]|\(\d{1,3}\)|[A-Za-z][.)]|\([A-Za-z]\)|#{1,6})[ \t]"
)
# The word before a "." that can be a list number or letter at a line start.
_LIST_WORD = re.compile(r"\d{1,3}(?:\.\d{1,3})*|[A-Za-z]")


@dataclasses.dataclass(frozen=True)
class Sentence:
    """One reasoning step: ``text == source[start:end]`` for the text it was split from."""

    index: int
    start: int
    end: int
    text: str


def _protected(text: str) -> tuple[bytearray, list[tuple[int, int]]]:
    """(mask of chars inside code, list of fenced blocks as (start, end))."""
    mask = bytearray(len(text))
    fences = []
    for m in _FENCE.finditer(text):
        fences.append(m.span())
        mask[m.start() : m.end()] = b"\x01" * (m.end() - m.start())
    if fences:
        outside = "".join("\x00" if mask[i] else ch for i, ch in enumerate(text))
    else:
        outside = text
    for m in _INLINE_CODE.finditer(outside):
        mask[m.start() : m.end()] = b"\x01" * (m.end() - m.start())
    return mask, fences


def _next_visible(text: str, j: int) -> str | None:
    n = len(text)
    while j < n and text[j].isspace():
        j += 1
    return text[j] if j < n else None


def _word_before(text: str, i: int) -> tuple[int, str]:
    w = i
    while w > 0 and not text[w - 1].isspace() and text[w - 1] not in _OPENERS:
        w -= 1
    return w, text[w:i]


def _ends_sentence(text: str, i: int, k: int, j: int, abbreviations: frozenset[str]) -> bool:
    """Whether the terminal run text[i:k] (closers up to j) ends a sentence at j."""
    run = text[i:k]
    if any(ch in _CJK_TERMINALS for ch in run):
        return True
    if j < len(text) and not text[j].isspace():
        return False
    nxt = _next_visible(text, j)
    if nxt is None:
        return True
    if "?" in run or "!" in run:
        return not (j > k and nxt.islower())
    # Only dots from here on: "." or an ellipsis.
    if nxt.islower():
        return False
    if run == ".":
        w, word = _word_before(text, i)
        if word.lower() in abbreviations:
            return False
        line_start = text.rfind("\n", 0, w) + 1
        if _LIST_WORD.fullmatch(word) and not text[line_start:w].strip():
            return False
    return True


def _boundaries(text: str, abbreviations: frozenset[str]) -> list[int]:
    n = len(text)
    mask, fences = _protected(text)
    cuts = set()
    for start, end in fences:
        cuts.update((start, end))
    # Rule 3: terminal punctuation.
    i = 0
    while i < n:
        if mask[i] or text[i] not in _TERMINALS:
            i += 1
            continue
        k = i
        while k < n and not mask[k] and text[k] in _TERMINALS:
            k += 1
        j = k
        while j < n and not mask[j] and text[j] in _CLOSERS:
            j += 1
        if _ends_sentence(text, i, k, j, abbreviations):
            cuts.add(j)
        i = j
    # Rule 2: line breaks.
    p = text.find("\n")
    while p != -1:
        if not mask[p]:
            line_start = text.rfind("\n", 0, p) + 1
            next_end = text.find("\n", p + 1)
            next_line = text[p + 1 : n if next_end == -1 else next_end]
            if (
                not next_line.strip()
                or _LINE_MARKER.match(next_line)
                or _LINE_MARKER.match(text[line_start:p])
            ):
                cuts.add(p)
        p = text.find("\n", p + 1)
    return sorted(c for c in cuts if 0 < c < n)


def split_sentences(text: str, *, abbreviations: Iterable[str] = ABBREVIATIONS) -> list[Sentence]:
    """Split `text` into sentences with exact offsets (rules in the module docstring).

    `abbreviations`: lowercase words without their final dot after which "." never ends a
    sentence (default `ABBREVIATIONS`).
    """
    if not isinstance(text, str):
        raise TypeError(f"split_sentences needs a str, got {type(text).__name__}")
    abbrevs = abbreviations if isinstance(abbreviations, frozenset) else frozenset(a.lower() for a in abbreviations)
    sentences: list[Sentence] = []
    previous = 0
    for cut in [*_boundaries(text, abbrevs), len(text)]:
        piece = text[previous:cut]
        stripped = piece.strip()
        if stripped:
            start = previous + (len(piece) - len(piece.lstrip()))
            end = start + len(stripped)
            sentences.append(Sentence(len(sentences), start, end, stripped))
        previous = cut
    return sentences


def token_index_of_char(offsets: Sequence[Sequence[int]], char_index: int) -> int:
    """Index of the first token whose character span ends after `char_index`: the token that
    contains that character, or the first token after it when it falls in a gap.

    `offsets` is a fast tokenizer's offset mapping (one ``(start, end)`` per token).  Spans
    that end at or before `char_index` (including ``(0, 0)`` spans of added special tokens) are
    skipped.  Returns ``len(offsets)`` when no token ends after `char_index` (the character is
    past the last token: a new token would go there).
    """
    ends = _running_max_ends(offsets)
    return bisect.bisect_right(ends, char_index)


def _running_max_ends(offsets: Sequence[Sequence[int]]) -> list[int]:
    # The first token with end > c is the first position where the running maximum of the
    # ends exceeds c; the running maximum is sorted, so bisect finds it.
    ends, top = [], -1
    for span in offsets:
        top = max(top, int(span[1]))
        ends.append(top)
    return ends


def sentence_token_starts(tokenizer, text: str, sentences: Sequence[Sentence]) -> list[int]:
    """For each sentence, the index of its first token in ``tokenizer(text)`` (no special tokens
    added, so indices match `ipo_jax.data.tokenizer.encode_text(tokenizer, text)`).

    Needs a fast tokenizer (offset mapping).  The token at a sentence start may include the
    whitespace before the sentence (see the module docstring).
    """
    try:
        encoding = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    except NotImplementedError as e:  # slow (Python) tokenizers have no offset mapping
        raise TypeError(
            f"sentence_token_starts needs a fast tokenizer with offset mapping; "
            f"{type(tokenizer).__name__} has none ({e})"
        ) from e
    ends = _running_max_ends(encoding["offset_mapping"])
    out = []
    for sentence in sentences:
        if text[sentence.start : sentence.end] != sentence.text:
            raise ValueError(f"sentence {sentence.index} does not match text[{sentence.start}:{sentence.end}]")
        out.append(bisect.bisect_right(ends, sentence.start))
    return out


def _covered(decode: Callable[[Sequence[int]], str], ids: Sequence[int], k: int, text: str) -> int:
    """How many leading characters of `text` decode(ids[:k]) reproduces (a token cut inside a
    multi-byte character decodes to U+FFFD and stops the count there)."""
    piece = decode(list(ids[:k]))
    return len(os.path.commonprefix([piece, text]))


def token_boundary_at_char(decode: Callable[[Sequence[int]], str], ids: Sequence[int], char: int) -> int:
    """The token index t where a split of the sampled `ids` at character `char` of their
    decoded text ``decode(ids)`` belongs: t is the first token whose decoded span covers
    `char` (so a word's leading space stays with the word: ``'.', ' Let'`` splits before
    ``' Let'``), moved back, if need be, until ``decode(ids[:t])`` is exactly a prefix of the
    text (a token that starts inside a multi-byte character, or one spanning the previous
    sentence's end as some CJK merges do, is kept whole on the right).

    Offsets come from decoding the sampled ids themselves, never from re-tokenising text: a
    binary search over prefix decodes (about log2(len(ids)) decodes).  `decode` must turn ids
    into the text the caller split into sentences (same special-token handling).  Returns
    len(ids) when `char` is at or past the end of the text.
    """
    text = decode(list(ids))
    if char >= len(text):
        return len(ids)
    lo, hi = 0, len(ids)  # smallest k with _covered(k) > char lies in (lo, hi]
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if _covered(decode, ids, mid, text) > char:
            hi = mid
        else:
            lo = mid
    t = hi - 1
    while t > 0 and not text.startswith(decode(list(ids[:t]))):
        t -= 1
    return t


def text_in_context(preceding: str, text: str) -> str:
    """`text` (stripped) as it continues `preceding`: with one leading space when `preceding`
    is non-empty and ends in a non-space character, so a byte-level BPE tokeniser encodes the
    first word with its space glued on (``' Wait'``, one token) instead of a lone ``' '``."""
    text = text.strip()
    if preceding and not preceding[-1].isspace():
        return " " + text
    return text


__all__ = ["ABBREVIATIONS", "Sentence", "sentence_token_starts", "split_sentences", "text_in_context",
           "token_boundary_at_char", "token_index_of_char"]
