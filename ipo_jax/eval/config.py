"""The `eval` config: every field with its default.  The model, sampling, sampler and mesh
sections are the policy's (ipo_jax/rollout/config.py) and the judge section the judging
package's (ipo_jax/judging/config.py), the same the pipeline config uses, so one judge setting
serves both."""

from __future__ import annotations

import ml_collections

from ipo_jax.judging.config import add_judge_sections
from ipo_jax.rollout.config import add_policy_sections


def base_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    add_policy_sections(c)
    add_judge_sections(c, detector=False)  # eval judges; it detects no cues
    c.tokenizer = ""  # a tokenizer directory; '' = the HF model directory
    c.sampling.max_new_tokens = 4096  # paper decoding: temperature 0.6, top-p 0.95 (pipeline defaults)
    # name=path[,name=path...]; names: jailbreakbench, strongreject, wildjailbreak, xstest, math500,
    # jsonl (our own files: id, prompt, kind, optional reference); path: a file, a published-file
    # directory or a `datasets` save_to_disk directory. Nothing is downloaded.
    c.benchmarks = ""
    c.limit = 0  # > 0: the first N items of each file
    c.samples_per_prompt = 1
    c.seed = 0
    c.train_prompts = ""  # comma-separated JSONL files (prompt field) the model trained on: contamination check
    c.ngram = 8  # word n-gram length of the contamination check
    c.label = ""  # the model's name in the report ('' = model.init)
    c.out = "runs/eval"
    return c
