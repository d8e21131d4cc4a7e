"""GRPO's rollouts: G completions per prompt from the policy being trained.

policy.backend 'local' (default): our `Sampler` runs on the training state itself -- the sampler is
built once on the policy model as it sits on the training mesh, and before each rollout its
parameter state is swapped for the train state's current params (`LocalRollouts.refresh`). The
sampler's programs take the parameters as arguments (ipo_jax/sampling/programs.py) and the new
params have the same tree, shapes, dtypes and shardings, so nothing is recompiled and no weight
is copied to another engine (on CPU the sampler's per-layer copy, `layers`, is re-made: a copy of
the block weights, as the sampler itself makes on CPU).

policy.backend 'http' (vLLM, `ipo-jax serve`): rollouts come from a server, and its weights follow
training by checkpoint: every policy.sync_every steps the current policy is exported as an ipo-jax
model directory to <train.out>/policy_sync/ (`orbax:<dir>` for `ipo-jax serve --model`, or convert
it to HF for vLLM), and the server must load it -- neither `ipo-jax serve` nor vLLM reloads a
directory by itself, so the user restarts the server on it (or runs a server that watches it;
policy.sync_wait seconds are waited after each export). This is much slower to refresh than the
local backend (an export and a server restart per sync), and between syncs the rollouts come from
an older policy: the loss's old log-probs are the training model's own (as TRL computes them), so
the ratio does not correct for the server's staleness.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from flax import nnx

from ipo_jax.checkpoint import save_orbax
from ipo_jax.data.pairs import prompt_messages
from ipo_jax.data.tokenizer import stop_token_ids
from ipo_jax.distributed import is_main_process
from ipo_jax.rollout import Completion, HttpPolicy, LocalPolicy, Policy, build_policy
from ipo_jax.sampling import Sampler, SamplingConfig

log = logging.getLogger(__name__)

SYNC_DIR = "policy_sync"


def sampling_config(config) -> SamplingConfig:
    s = config.sampling
    return SamplingConfig(temperature=s.temperature, top_p=s.top_p, top_k=s.top_k, max_new_tokens=s.max_new_tokens)


class LocalRollouts:
    """Rollouts from our sampler on the training state (module docstring)."""

    def __init__(self, graphdef, params, tokenizer, config, mesh):
        model = nnx.merge(graphdef, params)
        s = config.sampler
        # the sampler of `load_sampler`, on the model already loaded on the training mesh
        sampler = Sampler(model, eos_ids=stop_token_ids(tokenizer), pad_id=tokenizer.pad_token_id or 0,
                          batch_size=s.batch_size, max_prompt_length=s.max_prompt_length, chunk_tokens=s.chunk_tokens,
                          mesh=mesh, continuous_batching=s.continuous_batching)
        self.graphdef, self.sampler = graphdef, sampler
        self.policy: Policy = LocalPolicy(sampler, tokenizer, sampling_config(config), policy_id=config.model.init)

    def refresh(self, params, step: int) -> None:
        """Sample with `params` from now on (the train state's, after update `step`)."""
        programs = self.sampler.programs
        programs.state = params
        if programs.layers is not None:
            programs.layers = nnx.merge(self.graphdef, params).layer_states()


class HttpRollouts:
    """Rollouts from an OpenAI-compatible server; the policy exported for it every sync_every steps."""

    def __init__(self, graphdef, config, out: Path):
        self.graphdef, self.out = graphdef, out
        self.every, self.wait = config.policy.sync_every, config.policy.sync_wait
        self.policy: Policy = build_policy(config)
        if not isinstance(self.policy, HttpPolicy):
            raise ValueError("HttpRollouts needs policy.backend 'http'")

    def refresh(self, params, step: int) -> None:
        if step == 0 or step % self.every:
            return
        target = self.out / SYNC_DIR
        save_orbax(nnx.merge(self.graphdef, params), target, overwrite=True)
        if is_main_process():
            log.info("step %d: policy exported to %s; the server (%s) must load it (ipo-jax serve --model orbax:%s, "
                     "or convert it for vLLM) -- it does not reload by itself", step, target,
                     self.policy.describe().get("endpoint"), target)
        if self.wait:
            time.sleep(self.wait)


def sample_groups(policy: Policy, records: Sequence[Mapping[str, Any]], group: int, seed: int
                  ) -> tuple[list[list[int]], list[Completion]]:
    """`group` completions of each record's prompt, in group order (prompt-major), in ONE
    `complete` call (row r sampled from row_seed(seed, r)); with each row's prompt ids."""
    messages = [prompt_messages(dict(r)) for r in records]
    jobs = [(m, "") for m in messages for _ in range(group)]
    completions = policy.complete(jobs, seed)
    prompt_ids = [policy.prompt_ids(m, "") for m in messages]
    return [prompt_ids[i // group] for i in range(len(jobs))], completions


__all__ = ["SYNC_DIR", "HttpRollouts", "LocalRollouts", "sample_groups", "sampling_config"]
