"""GRPO as a stage (`ipo-jax grpo`): rollouts from the current policy, rewards, and the update.

    step.py     the jitted GRPO update on the mesh (policy + reference log-probs, ipo_jax.loss.grpo,
                micro-batches, AdamW); `build_grpo_step` builds it from a model config alone
    batch.py    rollouts (prompt ids + completion ids + advantages) as the step's batch
"""
