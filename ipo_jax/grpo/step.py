"""The GRPO update as ONE jitted step on the mesh: per-token log-probs of the completions under
the policy (and, when beta > 0, the frozen reference), GRPO's loss (ipo_jax/loss/grpo.py, used
as it is), gradients accumulated over micro-batches with `lax.scan`, then AdamW through
`ipo_jax.train.step.apply_update` (a non-finite update is skipped and counted, as in training).

A batch (`ipo_jax.grpo.batch.pack_rollouts` makes one) holds R rows of prompt + completion,
right-padded to one length T, as [micro_batches, rows, ...]:

  tokens, positions, segment_ids  [M,r,T] int32   the model's inputs (segment 0: padding)
  targets                         [M,r,T] int32   the next token of each position
  loss_mask                       [M,r,T] bool    True where the target is a completion token
  old_logp                        [M,r,T] float32 the sampling policy's log-probs of the targets
                                                  (used when num_iterations > 1; else ignored:
                                                  the step is on-policy, ratio 1 as TRL)
  advantages                      [M,r]   float32 one per row (group-normalised beforehand)

The whole batch's sequences and loss tokens are counted first, so the micro-batches' losses add
up exactly to the whole batch's for grpo, dr_grpo and dapo; bnpo (normalised by the batch it is
given) is averaged over the micro-batches, as TRL averages it over accumulation steps.

`build_grpo_step(model_cfg, mesh, settings)` is the small stable entry point (the benchmark
uses it): a random-init (or given) policy, the optimizer state, the jitted step and the
reference, from arrays alone.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any, Callable

import jax
import jax.numpy as jnp
import optax
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from ipo_jax.loss.grpo import GRPOLossConfig, grpo_loss
from ipo_jax.loss.logprobs import map_logit_chunks
from ipo_jax.models.config import ModelConfig
from ipo_jax.models.decoder import Decoder
from ipo_jax.sharding import logical_to_spec, param_shardings
from ipo_jax.train.step import (
    OptimConfig,
    TrainState,
    apply_update,
    init_train_state,
    learning_rate_schedule,
    make_optimizer,
    tree_shardings,
)

Array = jax.Array
log = logging.getLogger(__name__)

ROW_KEYS = ("tokens", "positions", "segment_ids", "targets", "loss_mask", "old_logp")  # [M,r,T]
SEQUENCE_KEYS = ("advantages",)  # [M,r]
BATCH_KEYS = ROW_KEYS + SEQUENCE_KEYS
# metric sums of one micro-batch that add up over micro-batches (then averaged per token)
SUM_KEYS = ("loss", "ratio", "clip_low", "clip_high", "clip_region", "kl", "entropy", "tokens", "sequences")


@dataclasses.dataclass(frozen=True)
class GRPOStepSettings:
    """What shapes the jitted step besides the model and mesh."""

    loss: GRPOLossConfig = GRPOLossConfig()
    optim: OptimConfig = OptimConfig()
    num_iterations: int = 1  # mu: updates per rollout batch; > 1 uses the batch's old_logp (TRL's num_iterations)
    logprob_chunk: int = 512  # sequence chunk of the vocabulary projection
    entropy: bool = True  # measure the policy's mean token entropy (one logsumexp more per chunk)

    def __post_init__(self):
        if not isinstance(self.num_iterations, int) or self.num_iterations < 1:
            raise ValueError(f"grpo.num_iterations must be an integer >= 1, got {self.num_iterations!r}")

    @property
    def uses_reference(self) -> bool:
        return self.loss.beta > 0


def row_spec(mesh: Mesh | None = None) -> PartitionSpec:
    """Rows over the logical 'batch' axes (data x fsdp), like the train step's."""
    return PartitionSpec(logical_to_spec(("batch",))[0])


def batch_shardings(mesh: Mesh) -> dict[str, NamedSharding]:
    """[M,r,T] arrays: rows split over the batch mesh axes; [M,r]: the same rows."""
    rows = row_spec(mesh)[0]
    per_token = NamedSharding(mesh, PartitionSpec(None, rows, None))
    per_row = NamedSharding(mesh, PartitionSpec(None, rows))
    return {**{k: per_token for k in ROW_KEYS}, **{k: per_row for k in SEQUENCE_KEYS}}


def token_logprobs_entropy(hidden: Array, targets: Array, unembed: Array, chunk_size: int, entropy: bool):
    """log p(target) [R,T] float32 (as `ipo_jax.loss.token_logprobs`: chunked over the sequence,
    each chunk rematerialised) and, with `entropy`, the distribution's entropy per position
    (no gradient), computed from the same chunk of logits; else None."""
    def logprobs_and_entropy(logits, t):
        lse = jax.nn.logsumexp(logits, axis=-1)
        logp = jnp.take_along_axis(logits, t[..., None].astype(jnp.int32), axis=-1)[..., 0] - lse
        if not entropy:
            return logp
        probs = jax.lax.stop_gradient(jax.nn.softmax(logits, axis=-1))
        return logp, jax.lax.stop_gradient(lse - jnp.sum(probs * logits, axis=-1))

    out = map_logit_chunks(hidden, targets, unembed, chunk_size, logprobs_and_entropy)
    return out if entropy else (out, None)


def completion_logprobs(params, graphdef, mb: dict[str, Array], chunk_size: int, entropy: bool = False,
                        row_sharding=None):
    """The model's log-probs of every row's next tokens [r,T] (and entropies, see above)."""
    model = nnx.merge(graphdef, params)
    hidden, _ = model.hidden_states(mb["tokens"], mb["positions"], mb["segment_ids"])
    if row_sharding is not None:
        hidden = jax.lax.with_sharding_constraint(hidden, row_sharding)
    return token_logprobs_entropy(hidden, mb["targets"], model.unembedding(), chunk_size, entropy)


def _row_sharding(mesh: Mesh | None):
    return None if mesh is None else NamedSharding(mesh, PartitionSpec(row_spec(mesh)[0], None, None))


def make_grpo_step(graphdef, tx: optax.GradientTransformation, settings: GRPOStepSettings,
                   schedule: optax.Schedule, mesh: Mesh | None = None) -> Callable:
    """step(state, batch, ref_params) -> (state, metrics); not jitted here (see `jit_grpo_step`).

    metrics: loss, the per-token means kl (beta > 0), ratio, clip_low / clip_high / clip_region,
    entropy, the counts tokens and sequences, grad_norm, learning_rate, skipped, update_applied."""
    cfg, chunk = settings.loss, settings.logprob_chunk
    row_sharding = _row_sharding(mesh)
    off_policy = settings.num_iterations > 1

    def micro_loss(params, mb, ref_params, totals):
        logp, ent = completion_logprobs(params, graphdef, mb, chunk, settings.entropy, row_sharding)
        ref_logp = None
        if settings.uses_reference:
            ref_logp, _ = completion_logprobs(ref_params, graphdef, mb, chunk, False, row_sharding)
            ref_logp = jax.lax.stop_gradient(ref_logp)
        old_logp = mb["old_logp"] if off_policy else None
        loss, metrics = grpo_loss(logp, old_logp, ref_logp, mb["advantages"], mb["loss_mask"], cfg,
                                  total_sequences=totals[0], total_tokens=totals[1])
        if ent is not None:
            metrics["entropy"] = jnp.sum(jnp.where(mb["loss_mask"], ent, 0.0))
        return loss, metrics

    grad_fn = jax.value_and_grad(micro_loss, has_aux=True)

    def step(state: TrainState, batch: dict[str, Array], ref_params=None):
        mask = batch["loss_mask"]
        totals = (jnp.sum(jnp.any(mask, axis=-1)).astype(jnp.float32), jnp.sum(mask).astype(jnp.float32))
        micro_batches = mask.shape[0]

        def accumulate(carry, mb):
            grads_sum, sums = carry
            (_, metrics), grads = grad_fn(state.params, mb, ref_params, totals)
            sums = {k: sums[k] + metrics[k] for k in sums}
            return (jax.tree.map(jnp.add, grads_sum, grads), sums), None

        keys = [k for k in SUM_KEYS if k != "kl" or settings.uses_reference]
        keys = [k for k in keys if k != "entropy" or settings.entropy]
        zero = ({k: jnp.zeros((), jnp.float32) for k in keys})
        (grads, sums), _ = jax.lax.scan(accumulate, (jax.tree.map(jnp.zeros_like, state.params), zero), batch)
        if cfg.loss_type == "bnpo":  # normalised per micro-batch: averaged over them (TRL)
            grads = jax.tree.map(lambda g: g / micro_batches, grads)
            sums["loss"] = sums["loss"] / micro_batches
        new_state, update_metrics = apply_update(state, grads, sums["loss"], tx, schedule)
        tokens = jnp.maximum(sums["tokens"], 1.0)
        metrics = {k: (v if k in ("loss", "tokens", "sequences") else v / tokens) for k, v in sums.items()}
        metrics["sequences"] = totals[0]
        metrics.update(update_metrics)
        return new_state, metrics

    return step


def jit_grpo_step(step_fn, state_shardings, mesh: Mesh, ref_shardings=None):
    """jax.jit with explicit in/out shardings; the train state is donated."""
    return jax.jit(step_fn, in_shardings=(state_shardings, batch_shardings(mesh), ref_shardings),
                   out_shardings=(state_shardings, NamedSharding(mesh, PartitionSpec())), donate_argnums=(0,))


def make_logprob_fn(graphdef, mesh: Mesh, chunk_size: int, param_shardings_tree) -> Callable:
    """jitted (params, batch) -> [M,r,T] float32 log-probs of the targets (forward only, one
    micro-batch at a time): the old log-probs of a rollout batch under the policy that sampled it."""
    row_sharding = _row_sharding(mesh)
    shardings = batch_shardings(mesh)

    def logprobs(params, batch):
        def one(_, mb):
            logp, _ = completion_logprobs(params, graphdef, mb, chunk_size, False, row_sharding)
            return None, logp
        _, out = jax.lax.scan(one, None, {k: batch[k] for k in ("tokens", "positions", "segment_ids", "targets")})
        return out

    return jax.jit(logprobs, in_shardings=(param_shardings_tree, shardings), out_shardings=shardings["old_logp"])


@dataclasses.dataclass
class GRPOStep:
    """A GRPO update ready to run: `state` (policy params, optimizer moments, counters), the jitted
    `step_fn(state, batch, ref_params) -> (state, metrics)`, `logprob_fn(params, batch)` for old
    log-probs, and the frozen reference's params (None when beta is 0)."""

    graphdef: Any
    state: TrainState
    state_shardings: Any
    step_fn: Callable
    logprob_fn: Callable
    ref_params: Any
    ref_shardings: Any
    settings: GRPOStepSettings

    def run(self, batch: dict[str, Array]) -> dict[str, Array]:
        """One update on a device batch (`put_batch`); replaces `state`; the step's metrics."""
        self.state, metrics = self.step_fn(self.state, batch, self.ref_params)
        return metrics

    def old_logprobs(self, batch: dict[str, Array]) -> Array:
        """The current policy's log-probs of the batch's targets [M,r,T] (the rollout's old log-probs)."""
        return self.logprob_fn(self.state.params, batch)


def build_grpo_step(model_cfg: ModelConfig, mesh: Mesh, settings: GRPOStepSettings, *, params=None,
                    ref_params=None, seed: int = 0) -> GRPOStep:
    """The GRPO update for `model_cfg` on `mesh` (module docstring).

    params: the policy's nnx.Param state (sharded on `mesh`; donated into the train state); None:
    a random init from `seed` straight into its shardings. ref_params: the frozen reference
    (beta > 0; None: a copy of the initial policy)."""
    if params is None:
        def build():
            return Decoder(model_cfg, rngs=nnx.Rngs(params=seed))
        graphdef, abstract = nnx.split(nnx.eval_shape(build), nnx.Param)
        params = jax.jit(lambda: nnx.split(build(), nnx.Param)[1], out_shardings=param_shardings(abstract, mesh))()
    else:
        graphdef, _ = nnx.split(nnx.eval_shape(lambda: Decoder(model_cfg, rngs=nnx.Rngs(0))), nnx.Param)
    ref_shardings = None
    if settings.uses_reference:
        ref_shardings = tree_shardings(params, mesh)
        if ref_params is None:  # a copy made before the params are donated
            ref_params = jax.jit(lambda p: jax.tree.map(jnp.copy, p), out_shardings=ref_shardings)(params)
    else:
        ref_params = None
    tx = make_optimizer(settings.optim)
    param_tree_shardings = tree_shardings(params, mesh)
    logprob_fn = make_logprob_fn(graphdef, mesh, settings.logprob_chunk, param_tree_shardings)
    state, state_shardings = init_train_state(params, tx, mesh)
    step_fn = jit_grpo_step(make_grpo_step(graphdef, tx, settings, learning_rate_schedule(settings.optim), mesh),
                            state_shardings, mesh, ref_shardings)
    return GRPOStep(graphdef, state, state_shardings, step_fn, logprob_fn, ref_params, ref_shardings, settings)


# ----------------------------------------------------------------------------- from a config, and for `ipo-jax plan`


def is_grpo_config(config) -> bool:
    """Whether a config is the grpo stage's (ipo-jax plan plans its update instead of train's)."""
    return "grpo" in config and "num_generations" in config.grpo


LOSS_FIELDS = tuple(f.name for f in dataclasses.fields(GRPOLossConfig) if f.name != "max_completion_length")


def settings_from_config(config, total_steps: int | None = None) -> GRPOStepSettings:
    """The step's settings from a grpo config (ipo_jax/grpo/config.py): GRPO's loss from the grpo
    section (dr_grpo's max_completion_length: sampling.max_new_tokens), AdamW from optim over
    train.max_steps x num_iterations updates unless `total_steps` says otherwise."""
    g = config.grpo
    loss = GRPOLossConfig(**{k: g[k] for k in LOSS_FIELDS}, max_completion_length=config.sampling.max_new_tokens)
    total = config.train.max_steps * g.num_iterations if total_steps is None else total_steps
    optim = OptimConfig(**config.optim, total_steps=total)
    return GRPOStepSettings(loss=loss, optim=optim, num_iterations=g.num_iterations, logprob_chunk=g.logprob_chunk,
                            entropy=g.entropy)


def rows_per_update(config) -> int:
    return config.grpo.prompts_per_step * config.grpo.num_generations


def rows_per_micro(config) -> int:
    """Rows of one micro-batch (the last one padded up: `pack_rollouts`)."""
    return -(-rows_per_update(config) // config.grpo.micro_batches)


def row_length(config) -> int:
    """The longest row the run compiles: the longest prompt + the most new tokens."""
    return config.sampler.max_prompt_length + config.sampling.max_new_tokens


def abstract_batch(mesh: Mesh, micro_batches: int, rows: int, length: int) -> dict:
    """The step's batch as abstract arrays with their shardings (dtypes as `pack_rollouts` makes them)."""
    shardings = batch_shardings(mesh)
    dtypes = {"loss_mask": jnp.bool_, "old_logp": jnp.float32, "advantages": jnp.float32}
    out = {k: jax.ShapeDtypeStruct((micro_batches, rows, length), dtypes.get(k, jnp.int32), sharding=shardings[k])
           for k in ROW_KEYS}
    out["advantages"] = jax.ShapeDtypeStruct((micro_batches, rows), jnp.float32, sharding=shardings["advantages"])
    return out


def compile_grpo_step(config, model_cfg: ModelConfig, mesh: Mesh, compile_options=None):
    """The run's GRPO update compiled for `mesh` from abstract inputs, as `build_grpo_step` builds it
    (no weight allocated): the policy's train state, the reference's params when beta > 0, and a
    batch of rows_per_micro x micro_batches rows of row_length tokens."""
    settings = settings_from_config(config, total_steps=1000)  # the schedule's length does not change memory
    graphdef, params = nnx.split(nnx.eval_shape(lambda: Decoder(model_cfg, rngs=nnx.Rngs(0))), nnx.Param)
    tx = make_optimizer(settings.optim)
    abstract_state = jax.eval_shape(lambda p: init_train_state(p, tx, mesh)[0], params)
    state_shardings = tree_shardings(abstract_state, mesh)
    abstract_state = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                                  abstract_state, state_shardings)
    ref_params = ref_shardings = None
    if settings.uses_reference:
        ref_shardings = tree_shardings(params, mesh)
        ref_params = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), params, ref_shardings)
    step = make_grpo_step(graphdef, tx, settings, learning_rate_schedule(settings.optim), mesh)
    jitted = jit_grpo_step(step, state_shardings, mesh, ref_shardings)
    batch = abstract_batch(mesh, config.grpo.micro_batches, rows_per_micro(config), row_length(config))
    return jitted.lower(abstract_state, batch, ref_params).compile(compile_options)


def kv_cache_bytes(config, model_cfg: ModelConfig, mesh_sizes) -> float:
    """Per-device bytes of the sampler's KV cache for one rollout batch (sampler.batch_size rows of
    row_length slots, rows over the batch axes, KV heads over tensor where they divide): what the
    rollout adds to the train state on the devices (the sampler shares the policy's weights).
    mesh_sizes: axis -> size."""
    spec = logical_to_spec(("batch",))[0]
    axes = (spec,) if isinstance(spec, str) else tuple(spec or ())
    row_parts = 1
    for a in axes:
        row_parts *= mesh_sizes[a]
    tensor = mesh_sizes.get("tensor", 1)
    head_parts = tensor if model_cfg.num_kv_heads % tensor == 0 else 1
    rows = -(-config.sampler.batch_size // row_parts)
    per_layer = 2 * rows * row_length(config) * (model_cfg.num_kv_heads // head_parts) * model_cfg.head_dim
    return per_layer * model_cfg.num_layers * jnp.dtype(model_cfg.dtype).itemsize


__all__ = ["BATCH_KEYS", "LOSS_FIELDS", "ROW_KEYS", "SEQUENCE_KEYS", "GRPOStep", "GRPOStepSettings",
           "abstract_batch", "batch_shardings", "build_grpo_step", "compile_grpo_step", "completion_logprobs",
           "is_grpo_config", "jit_grpo_step", "kv_cache_bytes", "make_grpo_step", "make_logprob_fn", "row_length",
           "rows_per_micro", "rows_per_update", "settings_from_config", "token_logprobs_entropy"]
