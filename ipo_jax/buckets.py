"""Length buckets: the few row lengths that get a compiled program.

Shared by training (`data.pairs`: a batch is padded to the bucket of its longest row) and
sampling (`sampling`: prompts, a fork's own tokens and its shared prefix are padded to theirs).
A leaf module -- it imports nothing from ipo_jax -- so both sit above it and neither imports
the other through it.
"""

from __future__ import annotations

from typing import Sequence


def bucket_length(n: int, buckets: Sequence[int]) -> int:
    """The smallest bucket that holds `n` tokens; ValueError when none does."""
    for b in sorted(buckets):
        if n <= b:
            return b
    raise ValueError(f"row of {n} tokens is longer than the largest bucket {max(buckets)}")


def default_buckets(max_length: int, smallest: int = 64, steps_per_octave: int = 1) -> list[int]:
    """Row lengths to compile, from `smallest` up to max_length (included).

    steps_per_octave 1: powers of two (at most half of a row is padding); 2: powers of two and
    1.5x each in between (64, 96, 128, 192, ...; at most a third is padding) for one more
    compiled shape per octave. Training uses 2: on the sample pairs with the Qwen3 tokenizer the
    prefix-shared rows (134-156 tokens) went from 44% padding (256-token rows) to 26% (192).
    """
    if steps_per_octave not in (1, 2):
        raise ValueError(f"steps_per_octave must be 1 or 2, got {steps_per_octave}")
    out, b = [], smallest
    while b < max_length:
        out.append(b)
        if steps_per_octave == 2 and b * 3 // 2 < max_length and (b * 3) % 2 == 0:
            out.append(b * 3 // 2)
        b *= 2
    return out + [max_length]


def power_of_two_buckets(largest: int) -> list[int]:
    """Every power of two below `largest`, then `largest`: 1, 2, 4, ..., largest. The sampler pads
    a fork's own tokens (the last prefix token and its suffix, usually a handful) to these."""
    return [b for b in (1 << i for i in range(32)) if b < largest] + [largest]


def batch_bucket(count: int, largest: int, multiple_of: int = 1) -> int:
    """The batch `count` rows run in: the smallest power of two at least `count` that is below
    `largest` and a multiple of `multiple_of` (few programs to compile), else `largest`."""
    for size in (1 << i for i in range(largest.bit_length() + 1)):
        if count <= size < largest and size % multiple_of == 0:
            return size
    return largest
