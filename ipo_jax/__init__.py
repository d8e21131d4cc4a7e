"""ipo_jax: Intervened Preference Optimization (IPO) for reasoning models, in JAX / Flax NNX."""

__version__ = "0.1.0"
