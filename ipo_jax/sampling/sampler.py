"""The sampler: see the package docstring."""

from __future__ import annotations

import dataclasses
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from ipo_jax.data.pairs import bucket_length, default_buckets
from ipo_jax.models.decoder import Decoder, KVCache
from ipo_jax.sharding import logical_to_spec


@dataclasses.dataclass(frozen=True)
class SamplingConfig:
    temperature: float = 0.6  # 0 = greedy (paper's evaluation decoding: 0.6, top-p 0.95)
    top_p: float = 0.95  # 1.0 = off
    top_k: int = 0  # 0 = off
    max_new_tokens: int = 256
    seed: int = 0

    def __post_init__(self):
        if self.temperature < 0 or not 0 < self.top_p <= 1 or self.top_k < 0 or self.max_new_tokens < 1:
            raise ValueError(f"bad sampling settings: {self}")


FINISH_REASONS = ("stop", "length")


@dataclasses.dataclass
class Generation:
    """One generated row.

    finish_reason is "stop" when the row ended on an end-of-sequence id (`end_id`) or on a stop
    string, "length" when it reached max_new_tokens (an end id sampled past the limit does not
    count). `completion_ids` are the ids exactly as sampled, without padding: `tokens` plus the
    end id when the row ended on one, so a continuation from them retraces the sampled path.
    """

    tokens: list[int]  # the new tokens, without the prompt (and without the end-of-sequence id)
    finish_reason: str  # 'stop' | 'length' (FINISH_REASONS)
    text: str | None = None  # decoded `tokens`, when the sampler has a decode function
    end_id: int | None = None  # the end-of-sequence id the row ended on (finish 'stop'), else None

    @property
    def completion_ids(self) -> list[int]:
        return list(self.tokens) + ([self.end_id] if self.end_id is not None else [])


def _threshold(values: jax.Array, enough: Callable[[jax.Array], jax.Array], iterations: int = 32) -> jax.Array:
    """Per row, the largest t (to 2^-iterations of the row's range) with enough(values >= t) true.

    Bisection instead of a sort over the vocabulary: O(iterations * V) elementwise work, which
    is much cheaper than sorting 150k logits per row at every decode step.
    """
    lo = jnp.min(values, axis=-1, keepdims=True)
    hi = jnp.max(values, axis=-1, keepdims=True)

    def step(_, bounds):
        lo, hi = bounds
        mid = (lo + hi) / 2
        ok = enough(values >= mid)
        return jnp.where(ok, mid, lo), jnp.where(ok, hi, mid)

    lo, _ = jax.lax.fori_loop(0, iterations, step, (lo, hi))
    return lo


def filter_logits(logits: jax.Array, temperature, top_p, top_k) -> jax.Array:
    """Temperature-scaled logits with the tokens outside top-k / top-p set to -inf.

    top-k keeps the tokens whose logit is at least the k-th largest; top-p then keeps the most
    probable tokens whose total probability reaches top_p (ties at the edge kept).
    """
    return _filter_scaled(logits / jnp.maximum(temperature, 1e-6), top_p, top_k)


def _filter_scaled(scaled: jax.Array, top_p, top_k) -> jax.Array:
    kth = _threshold(scaled, lambda keep: jnp.sum(keep, axis=-1, keepdims=True) >= top_k)
    scaled = jnp.where((top_k > 0) & (scaled < kth), -jnp.inf, scaled)
    probs = jax.nn.softmax(scaled, axis=-1)
    cut = _threshold(probs, lambda keep: jnp.sum(jnp.where(keep, probs, 0.0), axis=-1, keepdims=True) >= top_p)
    return jnp.where((top_p < 1.0) & (probs < cut), -jnp.inf, scaled)


def _pick(weights: jax.Array, target: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Per row of non-negative weights [B,n]: the first index whose running sum exceeds target [B],
    kept on a positive weight whatever the rounding, and what is left of target before it."""
    n = weights.shape[-1]
    running = jnp.cumsum(weights, axis=-1)
    index = jnp.sum(running <= target[:, None], axis=-1)
    positive = weights > 0
    first = jnp.argmax(positive, axis=-1)
    last = n - 1 - jnp.argmax(positive[:, ::-1], axis=-1)
    index = jnp.clip(index, first, last)
    before = jnp.take_along_axis(running - weights, index[:, None], axis=-1)[:, 0]
    return index, target - before


def sample_weights(weights: jax.Array, key, block: int = 256) -> jax.Array:
    """One index per row of non-negative weights [B,V] (each row with a positive sum), drawn with
    probability proportional to the weight: inverse-CDF sampling with one uniform per row.

    Two levels (a block of `block` entries, then an entry inside it) keep the running sums short.
    `jax.random.categorical` draws a Gumbel variate per vocabulary entry instead: B*V random
    numbers per step, which on CPU costs more than the rest of a small model's decode step.
    A weight of zero is never drawn.
    """
    B, V = weights.shape
    u = jax.random.uniform(key, (B,), jnp.float32)
    if V <= 4 * block:  # a small vocabulary: one level is fewer operations
        return _pick(weights, u * jnp.sum(weights, axis=-1))[0].astype(jnp.int32)
    pad = (-V) % block
    blocks = jnp.pad(weights, ((0, 0), (0, pad))).reshape(B, -1, block)
    sums = jnp.sum(blocks, axis=-1)
    which, rest = _pick(sums, u * jnp.sum(sums, axis=-1))
    inside, _ = _pick(jnp.take_along_axis(blocks, which[:, None, None], axis=1)[:, 0], rest)
    return (which * block + inside).astype(jnp.int32)


def sample_logits(logits: jax.Array, key, temperature, top_p, top_k) -> jax.Array:
    """One token per row from float32 logits [B,V]; temperature 0 = argmax. All settings traced.

    Greedy decoding skips the sampling work, and sampling skips the top-k / top-p thresholds
    when both are off (`lax.cond` on the traced settings, one compiled program for all).
    """

    def greedy(logits):
        return jnp.argmax(logits, axis=-1).astype(jnp.int32)

    def sample(logits):
        scaled = logits / jnp.maximum(temperature, 1e-6)
        filtering = (top_k > 0) | (top_p < 1.0)
        scaled = jax.lax.cond(filtering, lambda x: _filter_scaled(x, top_p, top_k), lambda x: x, scaled)
        return sample_weights(jnp.exp(scaled - jnp.max(scaled, axis=-1, keepdims=True)), key)

    return jax.lax.cond(temperature <= 0, greedy, sample, logits)


class Sampler:
    """Generate from token-id prompts with one model; compiled programs are reused across calls."""

    def __init__(
        self,
        model: Decoder,
        *,
        eos_ids: Sequence[int],
        pad_id: int = 0,
        batch_size: int = 8,
        max_prompt_length: int = 4096,
        prompt_buckets: Sequence[int] | None = None,
        chunk_tokens: int = 32,
        mesh: Mesh | None = None,
        decode: Callable[[list[int]], str] | None = None,
        unstack_layers: bool | None = None,
    ):
        """unstack_layers: keep a per-layer copy of the block weights for decoding (one more copy
        of the weights in memory), so a decode step reads each weight once instead of slicing it
        out of the stacked array. Default: on CPU, where XLA copies such slices every step."""
        self.cfg = model.cfg
        self.graphdef, self.state = nnx.split(model)
        if unstack_layers is None:
            unstack_layers = all(d.platform == "cpu" for d in model.embed[...].devices())
        self.layers = model.layer_states() if unstack_layers else None
        self.eos_ids = np.asarray(sorted(set(eos_ids)), np.int32)
        if self.eos_ids.size == 0:
            raise ValueError("eos_ids must name at least one end-of-sequence token")
        self.pad_id, self.batch_size, self.chunk_tokens = pad_id, batch_size, chunk_tokens
        self.buckets = list(prompt_buckets or default_buckets(max_prompt_length, smallest=32))
        self.decode = decode
        # Every input placed explicitly (committed), so the first decode chunk, fed by the prefill
        # and by the host, hits the same compiled program as the later ones, fed by the last chunk.
        if mesh is not None:
            self.row_sharding = NamedSharding(mesh, PartitionSpec(logical_to_spec(("batch",))[0]))
            self.scalar_sharding = NamedSharding(mesh, PartitionSpec())
        else:
            self.row_sharding = self.scalar_sharding = jax.sharding.SingleDeviceSharding(
                next(iter(model.embed[...].devices()))
            )
        self._prefill = jax.jit(self._prefill_fn)
        self._decode_chunk = jax.jit(self._decode_fn, static_argnames=("steps",), donate_argnums=(2,))

    # ------------------------------------------------------------------ device programs

    def _prefill_fn(self, state, layers, tokens, positions, segment_ids, cache, key, settings):
        model = nnx.merge(self.graphdef, state)
        hidden, cache = model.hidden_states(tokens, positions, segment_ids, cache=cache, layers=layers)
        logits = model.logits(hidden[:, -1])  # left padding: every row ends at the last column
        return sample_logits(logits, key, *settings), cache

    def _decode_fn(self, state, layers, carry, key, settings, eos_ids, steps: int):
        """Run up to `steps` decode steps; carry = (cache, last token, position, done, out, count)."""
        model = nnx.merge(self.graphdef, state)

        def cond(c):
            return (c["i"] < steps) & ~jnp.all(c["done"])

        def body(c):
            token = c["token"][:, None]
            hidden, cache = model.hidden_states(
                token, c["position"][:, None], jnp.ones_like(token), cache=c["cache"], layers=layers
            )
            step_key = jax.random.fold_in(key, c["count"] + c["i"])
            new = sample_logits(model.logits(hidden[:, -1]), step_key, *settings)
            new = jnp.where(c["done"], self.pad_id, new)
            done = c["done"] | jnp.isin(new, eos_ids)
            out = c["out"].at[:, c["i"]].set(jnp.where(c["done"], -1, new))
            return dict(c, cache=cache, token=new, position=c["position"] + 1, done=done, out=out, i=c["i"] + 1)

        start = dict(carry, out=jnp.full((carry["token"].shape[0], steps), -1, jnp.int32), i=jnp.zeros((), jnp.int32))
        end = jax.lax.while_loop(cond, body, start)
        carry = {k: end[k] for k in carry}
        carry["count"] = carry["count"] + end["i"]
        return carry, end["out"]

    # ------------------------------------------------------------------ host side

    def generate(
        self, prompts: Sequence[Sequence[int]], config: SamplingConfig, stop_strings: Sequence[str] = ()
    ) -> list[Generation]:
        if stop_strings and self.decode is None:
            raise ValueError("stop_strings need the sampler's `decode` function (token ids -> text)")
        results: list[Generation] = []
        key = jax.random.PRNGKey(config.seed)
        for start in range(0, len(prompts), self.batch_size):
            batch_key = jax.random.fold_in(key, start)
            results += self._generate_batch(prompts[start : start + self.batch_size], config, stop_strings, batch_key)
        return results

    def _put(self, x):
        x = jnp.asarray(x)
        return jax.device_put(x, self.row_sharding if x.ndim else self.scalar_sharding)

    def _generate_batch(self, prompts, config, stop_strings, key) -> list[Generation]:
        n = len(prompts)
        if any(len(p) == 0 for p in prompts):
            raise ValueError("empty prompt: every prompt needs at least one token")
        length = bucket_length(max(len(p) for p in prompts), self.buckets)
        B = self.batch_size
        tokens = np.full((B, length), self.pad_id, np.int32)
        segment_ids = np.zeros((B, length), np.int32)
        for i in range(B):
            ids = np.asarray(prompts[i] if i < n else prompts[0], np.int32)  # padding rows repeat a prompt
            tokens[i, length - len(ids) :] = ids
            segment_ids[i, length - len(ids) :] = 1
        positions = np.maximum(np.cumsum(segment_ids, axis=1) - 1, 0).astype(np.int32)
        settings = (
            jnp.float32(config.temperature),
            jnp.float32(config.top_p),
            jnp.int32(config.top_k),
        )
        # every decode call runs whole chunks, so the cache holds the rounded-up number of steps
        decode_steps = -(-(config.max_new_tokens - 1) // self.chunk_tokens) * self.chunk_tokens
        cache = KVCache.init(self.cfg, B, length + 1 + decode_steps)
        first, cache = self._prefill(
            self.state, self.layers, self._put(tokens), self._put(positions), self._put(segment_ids), cache,
            jax.random.fold_in(key, 1 << 30), settings,
        )
        eos = jnp.asarray(self.eos_ids)
        carry = dict(
            cache=cache,
            token=first,
            position=self._put(positions[:, -1] + 1),
            done=jnp.isin(first, eos) | (jnp.arange(B) >= n),
            count=self._put(np.int32(0)),
        )
        eos_set = set(self.eos_ids.tolist())
        generated = [[int(t)] for t in np.asarray(first)]
        finish = ["eos" if bool(d) else None for d in np.asarray(carry["done"])]
        remaining = config.max_new_tokens - 1
        while remaining > 0 and not all(f is not None for f in finish[:n]):
            steps = min(self.chunk_tokens, remaining)
            carry, out = self._decode_chunk(self.state, self.layers, carry, key, settings, eos, steps=self.chunk_tokens)
            out = np.asarray(out)[:, :steps]
            remaining -= steps
            done = np.asarray(carry["done"])
            for i in range(n):
                if finish[i] is not None:
                    continue
                new = [int(t) for t in out[i] if t >= 0]
                generated[i].extend(new)
                # an EOS past max_new_tokens (the last chunk runs whole) does not count
                if done[i] and eos_set.intersection(new):
                    finish[i] = "eos"
                elif stop_strings and any(s in self.decode(generated[i]) for s in stop_strings):
                    finish[i] = "stop"
            if stop_strings:  # rows stopped on the host stop decoding on the device too
                stopped = np.array([f == "stop" for f in finish])
                carry["done"] = carry["done"] | jnp.asarray(stopped)
        results = []
        for i in range(n):
            ids = generated[i][: config.max_new_tokens]
            reason, end_id = finish[i] or "length", None
            if reason == "eos":
                cut = next(j for j, t in enumerate(ids) if t in eos_set)
                ids, end_id, reason = ids[:cut], ids[cut], "stop"
            elif reason == "stop":  # keep tokens up to the one that completes the first stop string
                ids = ids[: next(k for k in range(1, len(ids) + 1) if any(s in self.decode(ids[:k]) for s in stop_strings))]
            text = self.decode(ids) if self.decode else None
            results.append(Generation(ids, reason, text, end_id))
        return results
