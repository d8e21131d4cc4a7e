"""A run's training data, made ready before anything is written: the pair files read and checked,
the tokenizer built or loaded, every pair tokenised and held to the length rule, the batches laid
out, and their sizes checked against the model's context and the host's memory.

Nothing here writes a file: a refused run leaves no train.out behind (the run's files are written
by `ipo_jax.train.run_dir.write_run_files` once every check has passed).

Size rules (`check_sizes`; each a TrainingError, exit 2, naming the setting to change):
  context   every kept pair's positions (prompt + prefix + its longer side) fit the model's
            max_position_embeddings; without packing data.max_length itself may not exceed it
            (a row is at most data.max_length tokens; with packing a row holds several pairs whose
            positions each start at 0, so only the pairs are held to the context).
  data      a micro-batch of more rows than the data set has (its pairs, or packed rows), rounded
            up to what the mesh's batch axes need, and more than MIN_ROWS_PER_MICRO, is refused:
            the rows past the data are padding in every step. So is gradient accumulation whose
            last micro-batch could only ever hold padding (pairs_per_micro x (micro_batches - 1)
            >= max(the data's units, MIN_ROWS_PER_MICRO)).
  memory    one step's token buffer on the host (rows x row length x micro_batches x the bytes
            each token slot takes in a packed batch) must fit the host's memory (physical memory,
            or the cgroup's limit when lower). Device memory is `ipo-jax plan`'s to check.
"""

from __future__ import annotations

import collections
import dataclasses
import logging
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from ipo_jax.buckets import bucket_length, default_buckets
from ipo_jax.checkpoint.init import tokenizer_dir_for
from ipo_jax.data.pairs import (
    PairBatches,
    PairSource,
    TokenizedPair,
    has_token_ids,
    length_problem,
    pack_pairs,
    pair_length,
    prompt_messages,
    read_pair_sources,
    tokenize_pair,
)
from ipo_jax.data.tiny_tokenizer import build_tiny_tokenizer
from ipo_jax.data.tokenizer import load_tokenizer
from ipo_jax.memory import format_bytes, host_memory_bytes
from ipo_jax.models.config import ModelConfig
from ipo_jax.train.config import base_config
from ipo_jax.train.errors import TrainingError
from ipo_jax.sharding import LOGICAL_RULES, logical_to_spec
from ipo_jax.train.step import check_batch_fits_mesh

log = logging.getLogger(__name__)

MIN_ROWS_PER_MICRO = 64  # a micro-batch this large is never refused as larger than the data


@dataclasses.dataclass
class TrainData:
    """What a run trains on, checked: the pairs kept by the length rule and their batches."""

    sources: list[PairSource]
    tokenizer: Any
    read: int  # pair records read from the files
    pairs: list[TokenizedPair]  # kept (in file order)
    dropped: list[dict]  # one entry per dropped pair, as skipped_pairs.jsonl lists it
    buckets: list[int]
    batches: PairBatches

    def summary(self, max_length: int, skipped_file: Path) -> str:
        """The 'pairs: N read, M used, K dropped ...' line of the run's log."""
        reasons = ", ".join(f"{k} {v}" for k, v in sorted(collections.Counter(s["reason"] for s in self.dropped).items()))
        return (f"pairs: {self.read} read, {len(self.pairs)} used, {len(self.dropped)} dropped as longer than "
                f"data.max_length {max_length} (never cut)"
                + (f": {reasons}, {len(self.dropped) / self.read:.1%} (see {skipped_file})" if self.dropped else ""))


def prepare_data(config) -> TrainData:
    """Read, tokenise, fit and lay out the pairs of config.data (nothing is written)."""
    d = config.data
    records, sources = read_pair_sources(d.pairs)
    tokenizer = build_tokenizer(config, records)
    where = {r["id"]: f"{r['_file']}:{r['_line']}" for r in records if "_file" in r and "_line" in r}
    pairs, dropped = fit_pairs(tokenize_records(records, tokenizer), config, where)
    buckets = list(d.buckets) if d.buckets else default_buckets(d.max_length, steps_per_octave=2)
    batches = PairBatches(pairs, d.pairs_per_micro, d.micro_batches, d.layout, d.mask_from, buckets, d.seed, d.shuffle,
                          packing=d.packing, weights=[s.weight for s in sources])
    return TrainData(sources, tokenizer, len(records), pairs, dropped, buckets, batches)


def build_tokenizer(config, records: list[dict]):
    """The run's tokenizer: config.tokenizer's directory (or the HF model's own), or with
    tokenizer='tiny' a small BPE built from the pair texts (tiny CPU runs and tests)."""
    if config.tokenizer != "tiny":
        return load_tokenizer(tokenizer_dir_for(config.tokenizer, config.model.init))
    with_ids = next((r for r in records if has_token_ids(r)), None)
    if with_ids is not None:
        raise TrainingError(
            f"{with_ids['_file']}:{with_ids['_line']} (id {with_ids['id']!r}) carries token ids (prefix_ids ...) of the "
            "tokenizer that sampled it, but tokenizer='tiny' builds a new vocabulary from the texts; set tokenizer to "
            "that tokenizer's directory"
        )
    corpus = []
    for r in records:
        corpus += [m["content"] for m in prompt_messages(r)] + [r["prefix"], r["chosen"], r["rejected"]]
    return build_tiny_tokenizer(corpus, vocab_size=config.tiny_tokenizer_vocab)


def tokenize_records(records: list[dict], tokenizer) -> list[TokenizedPair]:
    """Each record tokenised (`ipo_jax.data.pairs.tokenize_pair`: records with token ids keep them,
    checked against the tokenizer's size)."""
    return [tokenize_pair(tokenizer, r) for r in tqdm(records, desc="tokenize pairs", unit="pair", disable=None)]


def fit_pairs(pairs: list[TokenizedPair], config, where: dict[str, str] | None = None) -> tuple[list, list[dict]]:
    """(kept pairs, dropped pairs) under the length rule (ipo_jax/data/pairs.py `fit_to_length`, one
    rule for every layout): a pair whose prompt + prefix + chosen + rejected exceed data.max_length
    is dropped, never cut. Each dropped pair is described by its reason (`length_problem`), its
    lengths and `where` it was read (file:line, by id), as skipped_pairs.jsonl lists it. More than
    data.max_dropped_share of the pairs dropped, or none left, is a TrainingError naming the longest
    pair and the setting to raise."""
    if config.data.get("packing") and config.data.layout != "prefix_shared":  # checked before the model loads
        raise TrainingError(f"data.packing needs data.layout 'prefix_shared', got {config.data.layout!r}")
    max_length = config.data.max_length
    limit = config.data.get("max_dropped_share", base_config().data.max_dropped_share)
    kept, dropped = [], []
    for pair in pairs:
        reason = length_problem(pair, max_length)
        if reason is None:
            kept.append(pair)
            continue
        dropped.append({"id": pair.id, "reason": reason, **({"at": where[pair.id]} if where and pair.id in where else {}),
                        "tokens": pair_length(pair), "max_length": max_length, "prompt": len(pair.prompt),
                        "prefix": len(pair.prefix), "chosen": len(pair.chosen), "rejected": len(pair.rejected)})
    share = len(dropped) / len(pairs) if pairs else 0.0
    if dropped and (not kept or share > limit):
        longest = max(dropped, key=lambda s: s["tokens"])
        at = f" ({longest['at']})" if "at" in longest else ""
        why = "every pair would be dropped" if not kept else f"more than data.max_dropped_share {limit:g}"
        raise TrainingError(
            f"{len(dropped)} of {len(pairs)} pairs ({share:.1%}) are longer than data.max_length {max_length} "
            f"and would be dropped ({why}); the longest, {longest['id']!r}{at}, has {longest['tokens']} tokens "
            f"(prompt + prefix + chosen + rejected); raise data.max_length to at least {longest['tokens']} "
            "(`ipo-jax plan` checks the memory) or data.max_dropped_share"
        )
    return kept, dropped


# ----------------------------------------------------------------------------- size rules (module doc)


def check_sizes(config, data: TrainData, model_cfg: ModelConfig, mesh) -> None:
    """The module doc's size rules, before the model loads and before anything is written."""
    d = config.data
    _check_context(config, data, model_cfg)
    rows_per_pair = 2 if d.layout == "duplicated" else 1
    check_batch_fits_mesh(d.pairs_per_micro * rows_per_pair, mesh)
    devices = _batch_devices(mesh)
    _check_rows_against_data(config, data, devices // np.gcd(devices, rows_per_pair))
    _check_host_memory(config, data, rows_per_pair)


def _check_context(config, data: TrainData, model_cfg: ModelConfig) -> None:
    context, d = model_cfg.max_position_embeddings, config.data
    model = f"model.init {config.model.init!r} has a context of {context} positions (max_position_embeddings)"
    if not d.packing and d.max_length > context:
        raise TrainingError(f"data.max_length {d.max_length} is longer than the model's context: {model}; "
                            f"set data.max_length to at most {context}")
    positions = lambda p: p.row_length("duplicated")  # noqa: E731 -- prompt + prefix + the longer side
    longest = max(data.pairs, key=positions, default=None)
    if longest is not None and positions(longest) > context:
        raise TrainingError(f"pair {longest.id!r} needs {positions(longest)} positions (prompt + prefix + its longer side) "
                            f"but {model}; set data.max_length to at most {context} (longer pairs are dropped)")


def _batch_devices(mesh) -> int:
    """How many devices a micro-batch's rows are split over (the mesh axes of the 'batch' dimension)."""
    spec = logical_to_spec(("batch",), LOGICAL_RULES)[0]
    axes = (spec,) if isinstance(spec, str) else tuple(spec or ())
    return int(np.prod([mesh.shape[a] for a in axes], dtype=np.int64))


def _round_up(n: int, multiple: int) -> int:
    return -(-n // multiple) * multiple


def _check_rows_against_data(config, data: TrainData, multiple: int) -> None:
    d, units = config.data, data.batches.units
    what = "packed rows" if d.packing else "pairs"
    most = _round_up(max(units, MIN_ROWS_PER_MICRO), multiple)
    if d.pairs_per_micro > most:
        raise TrainingError(
            f"data.pairs_per_micro {d.pairs_per_micro} is larger than the data needs: an epoch holds {units} {what}, so "
            f"its rows past the data would be padding in every step; set data.pairs_per_micro to at most {most}")
    if d.pairs_per_micro * (d.micro_batches - 1) >= max(units, MIN_ROWS_PER_MICRO):
        most_micro = -(-max(units, MIN_ROWS_PER_MICRO) // d.pairs_per_micro)  # (most - 1) x rows stays below
        raise TrainingError(
            f"data.micro_batches {d.micro_batches} x data.pairs_per_micro {d.pairs_per_micro} is larger than the data "
            f"needs: an epoch holds {units} {what}, so the last micro-batch of every step would hold only padding; "
            f"set data.micro_batches to at most {most_micro}")


def _check_host_memory(config, data: TrainData, rows_per_pair: int) -> None:
    d = config.data
    if d.packing:
        row_length = max(data.buckets)
    else:
        longest = max((p.row_length(d.layout) for p in data.pairs), default=1)
        row_length = bucket_length(longest, data.buckets)
    sample = pack_pairs([None], layout="prefix_shared", mask_from=d.mask_from, length=1)
    bytes_per_slot = sum(a.itemsize for a in sample.values() if a.ndim == 2)  # every [rows, length] array
    rows = d.pairs_per_micro * rows_per_pair * d.micro_batches
    needed, memory = rows * row_length * bytes_per_slot, host_memory_bytes()
    if needed > memory:
        raise TrainingError(
            f"one step's batch needs {format_bytes(needed)} of host memory ({rows} rows of {row_length} tokens, "
            f"{bytes_per_slot} bytes per token) but this host has {format_bytes(memory)}; lower data.pairs_per_micro, "
            "data.micro_batches or data.max_length")
