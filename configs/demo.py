"""The main job on the embedded default (`make demo`): the IPO demo world end to end.

1. Model round trip on each tiny preset (HF export -> transformers logits and greedy decoding,
   HF re-import bitwise, orbax exact).
2. The demo world (ipo_jax/demo_world.py): placeholder-only data, a tiny R1-style tokenizer, and a
   ~0.9M-parameter Qwen3-shaped policy warmed up by SFT so it often complies.
3. The pipeline: sample -> pattern judge -> first compliance cue -> triggers -> pairs; plus
   full-trajectory pairs for the DPO baseline.
4. Training from the warm policy: SFT on safe trajectories, DPO on the full trajectory, IPO.
5. Evaluation of base and each method on held-out prompts, report with the ablation table.
6. The IPO policy exported to HF format, reloaded with transformers, one answer generated.

Each stage runs on its own stage's config: the `base_config()` of ipo_jax/train/config.py,
ipo_jax/pipeline/config.py or ipo_jax/eval/config.py with the changes below (ipo_jax/demo.py
composes them). A stage default the demo keeps is not repeated here: the paper's decoding
(temperature 0.6, top-p 0.95), 3 intervention rounds of at most 14 generations per prompt, DPO's
beta 0.1, each method's loss preset (IPO's NLL weight 0.2), the contamination check's 8-grams.
To change such a field, add it to its section here (e.g. `c.sampling.temperature = 0.7`): the demo
applies every field of `training`, `sampling`, `sampler` and `intervention` to the stage configs.

Every stage keeps its output under `out` and is skipped on a re-run when its config is
unchanged.  Override any field, e.g.  ipo-jax demo --config configs/demo.py --config.methods.steps=40
`short=True` is the CI-sized version (a few steps, tiny sets).
"""

import ml_collections

from ipo_jax.demo_world import WorldConfig

WORLD = WorldConfig()


def get_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.out = "runs/demo"
    c.seed = 0  # every stage's seed (data order, initialisation, sampling) derives from it
    c.short = False  # True: the CI-sized run (tiny sets, a few steps); checks the chain, not the numbers

    # 1. round trip
    c.presets = ("tiny-llama", "tiny-qwen2", "tiny-qwen3")  # round trip: the tiny presets checked against transformers
    c.initializer_range = 0.2  # random weights this wide give logits of order 1-5, not near-zero
    c.batch = 4  # round trip: rows of random tokens through both implementations
    c.length = 24  # round trip: tokens per row (the last row left-padded by a third)
    c.new_tokens = 16  # round trip: greedy tokens compared with transformers' generate
    c.logit_tolerance = 1e-4  # round trip: the largest |our logit - transformers' logit| accepted

    # 2. world, tokenizer, warm-up
    c.world = ml_collections.ConfigDict()  # the world's own defaults (ipo_jax/demo_world.py WorldConfig)
    c.world.heldout_topics = WORLD.heldout_topics  # risky topics kept out of training (the held-out harmful prompts)
    c.world.heldout_lookalikes = WORLD.heldout_lookalikes  # benign look-alikes kept out of training (over-refusal set)
    c.world.compliant_share = WORLD.compliant_share  # warm-up: share of risky requests answered compliantly
    c.world.over_refusal_share = WORLD.over_refusal_share  # warm-up: share of look-alikes answered with a refusal
    c.world.warmup_risky_repeats = WORLD.warmup_risky_repeats  # warm-up: examples per (risky topic, phrasing)
    c.world.warmup_lookalike_repeats = WORLD.warmup_lookalike_repeats  # warm-up: examples per (look-alike, phrasing)
    c.world.warmup_math = WORLD.warmup_math  # warm-up: arithmetic word problems with worked reasoning
    c.world.eval_math = WORLD.eval_math  # held-out arithmetic problems
    c.tokenizer_vocab = 1024  # the tiny R1-style tokenizer's vocabulary, built from the world's text
    c.model = "preset:demo-qwen3"  # the policy before the warm-up: random weights of this shape
    c.warmup = ml_collections.ConfigDict()  # the warm-up SFT (loss preset sft) of the random policy
    c.warmup.steps = 160  # warm-up: optimizer steps
    c.warmup.learning_rate = 3e-3  # warm-up: peak learning rate
    c.warmup.pairs_per_micro = 16  # warm-up: pairs per step
    c.warmup.b2 = 0.99  # warm-up: Adam's second-moment decay (the methods keep the train config's)

    # changes to the train config (ipo_jax/train/config.py) for the warm-up and every method
    c.training = ml_collections.ConfigDict()
    c.training.data = ml_collections.ConfigDict()
    c.training.data.max_length = 256  # a longer pair is dropped (counted, reported), never cut
    c.training.data.buckets = (128, 256)  # two compiled shapes
    c.training.train = ml_collections.ConfigDict()
    c.training.train.logprob_chunk = 64  # sequence chunk of the vocabulary projection

    # 3. pipeline; `sampling` and `sampler` are changes to the pipeline and eval configs, `intervention`
    # to the pipeline config (ipo_jax/pipeline/config.py)
    c.sampling = ml_collections.ConfigDict()
    c.sampling.max_new_tokens = 160  # new tokens per generation (pipeline and eval)
    c.sampler = ml_collections.ConfigDict()
    c.sampler.batch_size = 32  # rows sampled together
    c.sampler.max_prompt_length = 256  # prompt + the intervened prefix + trigger
    c.intervention = ml_collections.ConfigDict()
    c.intervention.chunk_prompts = 32  # prompts per pipeline chunk
    c.full_trajectory_samples = 4  # samples per prompt for the full-trajectory DPO pairs

    # 4. methods (all from the warm policy, same steps and batch; each one's loss is a loss.preset)
    c.methods = ml_collections.ConfigDict()
    # the paper's baselines beside IPO: SFT (on the pipeline's safe trajectories, and on a STAR-1-format
    # safety-reasoning dataset), DPO on the full trajectory, GRPO with the safety judge as reward
    c.methods.names = ("sft", "sft_star1", "dpo_full", "grpo", "ipo")  # some of sft, sft_star1, dpo_full, dpo_partial, grpo, ipo (ipo_jax/demo.py METHODS)
    c.methods.steps = 50  # methods: optimizer steps each
    c.methods.learning_rate = 3e-4  # methods: peak learning rate
    c.methods.pairs_per_micro = 16  # methods: pairs per step

    # 5. evaluation
    c.eval_samples = 4  # samples per held-out prompt
    return c
