"""The train state and the one jitted train step (explicit shardings, donated state).

A step takes one global batch laid out as [micro_batches, rows, ...], accumulates loss sums
and gradients over the micro-batches with `lax.scan`, divides by the number of valid pairs
(so k micro-batches equal one full batch), clips, applies AdamW, and skips the update (and
counts it) when the loss, the gradient, or any updated parameter or optimizer state is not finite.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any, Callable

import flax.struct
import jax
import jax.numpy as jnp
import optax
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from ipo_jax.loss import LossConfig, gather_positions, pair_logps, preference_loss, token_logprobs
from ipo_jax.loss.preference import average_metrics
from ipo_jax.sharding import LOGICAL_RULES, logical_to_spec, named_sharding

Array = jax.Array
logger = logging.getLogger(__name__)

# Batch arrays with one entry per row / per pair (after the leading micro-batch axis).
ROW_KEYS = (
    "tokens",
    "positions",
    "segment_ids",
    "branch_ids",
    "slot_source",
    "slot_target",
    "slot_pair",
    "slot_chosen",
    "slot_rejected",
)
PAIR_KEYS = ("pair_valid", "ref_chosen", "ref_rejected")


@flax.struct.dataclass
class TrainState:
    params: Any  # nnx.State of the policy's nnx.Param variables
    opt_state: Any
    step: Array  # int32: optimizer updates attempted
    skipped: Array  # int32: updates skipped for a non-finite loss or gradient
    consecutive_skips: Array  # int32


MOMENT_DTYPES = ("float32", "bfloat16")


@dataclasses.dataclass(frozen=True)
class OptimConfig:
    """AdamW with warmup + cosine decay and global-norm clipping. These defaults are the config's
    (`base_config()` builds its `optim` section from them); `total_steps` is not a setting: the
    loop derives it from train.epochs / train.max_steps."""

    learning_rate: float = 2e-6  # peak learning rate (paper scale: 1e-6 to 5e-6)
    warmup_steps: int = 10  # linear warmup from 0
    end_lr_ratio: float = 0.1  # the cosine decay ends at learning_rate * end_lr_ratio
    weight_decay: float = 0.0  # AdamW's decoupled weight decay
    b1: float = 0.9  # Adam's first-moment decay
    b2: float = 0.95  # Adam's second-moment decay
    eps: float = 1e-8  # Adam's denominator epsilon
    clip_norm: float = 1.0  # global gradient-norm clip
    moment_dtype: str = "float32"  # Adam's moments: float32, or bfloat16 to halve their memory
    total_steps: int = 1000

    def __post_init__(self):
        if self.moment_dtype not in MOMENT_DTYPES:
            raise ValueError(f"optim.moment_dtype must be one of {MOMENT_DTYPES}, got {self.moment_dtype!r}")


def learning_rate_schedule(cfg: OptimConfig) -> optax.Schedule:
    """Linear warmup from 0, then cosine decay to end_lr_ratio * learning_rate."""
    warmup = max(0, min(cfg.warmup_steps, cfg.total_steps - 1))
    return optax.warmup_cosine_decay_schedule(
        0.0, cfg.learning_rate, warmup, max(cfg.total_steps, warmup + 1), cfg.learning_rate * cfg.end_lr_ratio
    )


def make_optimizer(cfg: OptimConfig) -> optax.GradientTransformation:
    """Clip, then AdamW. The parameters it updates are the float32 masters (model.param_dtype);
    the moments are float32 too unless moment_dtype says bfloat16 (stored low, updated in float32)."""
    adamw = optax.adamw(learning_rate_schedule(cfg), b1=cfg.b1, b2=cfg.b2, eps=cfg.eps, weight_decay=cfg.weight_decay)
    if cfg.moment_dtype != "float32":
        adamw = with_stored_dtype(adamw, jnp.dtype(cfg.moment_dtype))
    return optax.chain(optax.clip_by_global_norm(cfg.clip_norm), adamw)


def with_stored_dtype(inner: optax.GradientTransformation, dtype) -> optax.GradientTransformation:
    """`inner` with its floating-point state stored in `dtype` between steps and widened to
    float32 for each update: the moments' memory halves in bfloat16, the arithmetic does not."""

    def cast(tree, to):
        return jax.tree.map(lambda x: x.astype(to) if jnp.issubdtype(x.dtype, jnp.floating) else x, tree)

    def init(params):
        return cast(inner.init(params), dtype)

    def update(updates, state, params=None):
        updates, state = inner.update(updates, cast(state, jnp.float32), params)
        return updates, cast(state, dtype)

    return optax.GradientTransformation(init, update)


def tree_shardings(tree, mesh: Mesh, rules=LOGICAL_RULES):
    """Shardings for any pytree holding nnx Variables (params, optimizer moments): Variables by
    their logical axes, every other array replicated."""

    def one(path, leaf):
        if isinstance(leaf, nnx.Variable):
            axes = leaf.get_metadata().get("logical_axes")
            name = "/".join(str(getattr(k, "key", getattr(k, "name", k))) for k in path)
            spec_sharding = named_sharding(mesh, axes, leaf.shape, name=name, rules=rules)
            return leaf.replace(spec_sharding)
        return NamedSharding(mesh, PartitionSpec())

    return jax.tree_util.tree_map_with_path(one, tree, is_leaf=lambda x: isinstance(x, nnx.Variable))


def batch_shardings(mesh: Mesh, rules=LOGICAL_RULES) -> dict[str, NamedSharding]:
    """Rows split over the batch mesh axes; per-pair arrays (tiny) replicated."""
    rows = NamedSharding(mesh, PartitionSpec(None, *logical_to_spec(("batch", "length"), rules)))
    pairs = NamedSharding(mesh, PartitionSpec())
    return {**{k: rows for k in ROW_KEYS}, **{k: pairs for k in PAIR_KEYS}}


def check_batch_fits_mesh(rows_per_micro: int, mesh: Mesh, rules=LOGICAL_RULES) -> None:
    spec = logical_to_spec(("batch",), rules)[0]
    axes = (spec,) if isinstance(spec, str) else tuple(spec or ())
    parts = 1
    for a in axes:
        parts *= mesh.shape[a]
    if rows_per_micro % parts:
        raise ValueError(
            f"{rows_per_micro} rows per micro-batch cannot be split over the batch mesh axes {axes} "
            f"({parts} devices); choose pairs_per_micro so the rows divide {parts}"
        )


def policy_pair_logps(params, graphdef, mb: dict[str, Array], chunk_size: int, row_sharding=None):
    """Per-pair summed log-probs (chosen, rejected) and loss-token counts for one micro-batch."""
    model = nnx.merge(graphdef, params)
    hidden, _ = model.hidden_states(mb["tokens"], mb["positions"], mb["segment_ids"], mb["branch_ids"])
    if row_sharding is not None:  # rows split over the batch axes, so the slot gather stays row-local
        hidden = jax.lax.with_sharding_constraint(hidden, row_sharding)
    hidden = gather_positions(hidden, mb["slot_source"])
    logps = token_logprobs(hidden, mb["slot_target"], model.unembedding(), chunk_size)
    num_pairs = mb["pair_valid"].shape[0]
    return pair_logps(logps, mb["slot_pair"], mb["slot_chosen"], mb["slot_rejected"], num_pairs)


def _tree_where(pred, a, b):
    return jax.tree.map(lambda x, y: jnp.where(pred, x, y), a, b)


def all_finite(tree) -> Array:
    """True when every floating-point entry of the pytree is finite (integer leaves always are)."""
    checks = [jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree) if jnp.issubdtype(x.dtype, jnp.inexact)]
    return jnp.all(jnp.stack(checks)) if checks else jnp.array(True)


def make_train_step(
    graphdef,
    tx: optax.GradientTransformation,
    loss_cfg: LossConfig,
    schedule: optax.Schedule,
    *,
    chunk_size: int = 512,
    reference_on_the_fly: bool = False,
    mesh: Mesh | None = None,
) -> Callable:
    """step(state, batch, ref_params) -> (state, metrics). Not jitted here; see `jit_train_step`.

    metrics hold the loss, loss/<term> for each of loss_cfg.terms, rewards, and the step's counters."""
    logger.info("loss: %s", loss_cfg.describe())
    row_sharding = None
    if mesh is not None:
        row_sharding = NamedSharding(mesh, PartitionSpec(logical_to_spec(("batch",))[0], None, None))

    def micro_loss(params, mb, ref_params):
        logp_c, logp_r, n_c, n_r = policy_pair_logps(params, graphdef, mb, chunk_size, row_sharding)
        if not loss_cfg.needs_reference:
            ref_c = ref_r = jnp.zeros_like(logp_c)
        elif reference_on_the_fly:
            ref_c, ref_r, _, _ = policy_pair_logps(ref_params, graphdef, mb, chunk_size, row_sharding)
            ref_c, ref_r = jax.lax.stop_gradient(ref_c), jax.lax.stop_gradient(ref_r)
        else:
            ref_c, ref_r = mb["ref_chosen"], mb["ref_rejected"]
        return preference_loss(logp_c, logp_r, ref_c, ref_r, n_c, n_r, mb["pair_valid"], loss_cfg)

    grad_fn = jax.value_and_grad(micro_loss, has_aux=True)

    def step(state: TrainState, batch: dict[str, Array], ref_params=None):
        def accumulate(carry, mb):
            grads_sum, metric_sums = carry
            (_, metrics), grads = grad_fn(state.params, mb, ref_params)
            return (jax.tree.map(jnp.add, grads_sum, grads), jax.tree.map(jnp.add, metric_sums, metrics)), None

        zero_grads = jax.tree.map(jnp.zeros_like, state.params)
        zero_metrics = {k: jnp.zeros((), jnp.float32) for k in loss_cfg.metric_keys}
        (grads, sums), _ = jax.lax.scan(accumulate, (zero_grads, zero_metrics), batch)
        pairs = jnp.maximum(sums["pairs"], 1.0)
        grads = jax.tree.map(lambda g: g / pairs, grads)
        new_state, update_metrics = apply_update(state, grads, sums["loss"], tx, schedule)
        metrics = average_metrics(sums)
        metrics.update(update_metrics)
        return new_state, metrics

    return step


def apply_update(state: TrainState, grads, loss: Array, tx: optax.GradientTransformation,
                 schedule: optax.Schedule) -> tuple[TrainState, dict[str, Array]]:
    """One optimizer update of `state` with `grads` (already averaged), skipped -- and counted --
    unless the loss, the gradient and every updated parameter and moment are finite; the new state
    and the metrics grad_norm, learning_rate, skipped, update_applied (also the GRPO step's)."""
    grad_norm = optax.global_norm(grads)
    updates, new_opt_state = tx.update(grads, state.opt_state, state.params)
    new_params = optax.apply_updates(state.params, updates)
    # an update is applied only if it leaves every parameter and optimizer moment finite
    # (a huge but finite gradient, or a damaged moment, can still overflow them)
    finite = (jnp.isfinite(loss) & jnp.isfinite(grad_norm)
              & all_finite(new_params) & all_finite(new_opt_state))
    new_state = TrainState(
        params=_tree_where(finite, new_params, state.params),
        opt_state=_tree_where(finite, new_opt_state, state.opt_state),
        step=state.step + 1,
        skipped=state.skipped + (~finite).astype(jnp.int32),
        consecutive_skips=jnp.where(finite, 0, state.consecutive_skips + 1),
    )
    metrics = dict(grad_norm=grad_norm, learning_rate=schedule(state.step), skipped=new_state.skipped,
                   update_applied=finite.astype(jnp.int32))
    return new_state, metrics


def jit_train_step(step_fn, state_shardings, mesh: Mesh, ref_shardings=None):
    """jax.jit with explicit in/out shardings; the train state is donated."""
    replicated = NamedSharding(mesh, PartitionSpec())
    return jax.jit(
        step_fn,
        in_shardings=(state_shardings, batch_shardings(mesh), ref_shardings),
        out_shardings=(state_shardings, replicated),
        donate_argnums=(0,),
    )


def init_train_state(params, tx, mesh: Mesh):
    """Train state with optimizer moments sharded like the parameters they mirror."""
    abstract = jax.eval_shape(lambda p: _new_state(p, tx), params)
    shardings = tree_shardings(abstract, mesh)
    state = jax.jit(lambda p: _new_state(p, tx), out_shardings=shardings, donate_argnums=0)(params)
    return state, shardings


def _new_state(params, tx) -> TrainState:
    zero = jnp.zeros((), jnp.int32)
    return TrainState(params=params, opt_state=tx.init(params), step=zero, skipped=zero, consecutive_skips=zero)


def put_batch(batch: dict, shardings: dict) -> dict:
    """Host batch (the same global numpy batch on every process) -> global sharded arrays;
    each process fills only the shards its devices hold."""
    return {
        k: jax.make_array_from_callback(v.shape, shardings[k], lambda index, v=v: v[index]) for k, v in batch.items()
    }
