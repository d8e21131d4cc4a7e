"""The paper's evaluation: JailbreakBench, StrongREJECT, WildJailbreak (harmful % of reasoning and
of response), XSTest (over-refusal, three-class LLM judge), AIME, MATH-500, GPQA-Diamond and
HumanEval (pass@1; AIME: the 2024 exams, `aime.years`), sampled at temperature 0.6, top-p 0.95 with 32768 new tokens for the
reasoning evaluations.  Point the paths at your local copies (nothing is downloaded) and the
judge at an OpenAI-compatible endpoint:

ipo-jax eval --config configs/eval_paper.py --config.model.init=hf:/models/my-ipo-model \\
    --config.judge.base_url=http://localhost:8000/v1 --config.judge.model=judge \\
    --config.label=IPO-R1-Distill-Qwen-7B --config.out=runs/eval/ipo-7b

Several hosts, each with the whole model on its own devices: the same command on host i with
--config.num_shards=<hosts> --config.shard=<i> and a shared --config.out; the last part to
finish writes the merged summary and report.
"""

from ipo_jax.eval.config import base_config

DATA = "data/eval"  # where the published files live (one directory per benchmark)


def get_config():
    c = base_config()
    c.benchmarks = ",".join([
        f"jailbreakbench={DATA}/jailbreakbench/harmful-behaviors.csv",
        f"strongreject={DATA}/strongreject/strongreject_dataset.csv",
        f"wildjailbreak={DATA}/wildjailbreak/eval.tsv",
        f"xstest={DATA}/xstest/xstest_prompts.csv",
        f"aime={DATA}/aime",
        f"math500={DATA}/math500/test.jsonl",
        f"gpqa={DATA}/gpqa/gpqa_diamond.csv",
        f"humaneval={DATA}/humaneval/HumanEval.jsonl.gz",
    ])
    c.sampling.temperature = 0.6
    c.sampling.top_p = 0.95
    c.sampling.max_new_tokens = 32768  # the reasoning evaluations
    c.samples_per_prompt = 1
    c.samples_per_benchmark = "aime=16,gpqa=4,humaneval=5"  # small sets: pass@1 over n samples per prompt
    # AIME 2024 (30 problems: aime_2024_problems.parquet or aime2024.jsonl in data/eval/aime); the paper
    # does not name the year. '2024,2025' adds both 2025 halves (another number: the report lists the files)
    c.aime.years = "2024"
    c.wildjailbreak.sample = 250  # a seeded sample of the adversarial harmful evaluation prompts
    c.wildjailbreak.seed = 0
    c.xstest.judge = "llm"  # the three-class classifier; 'string_match' only without an LLM judge
    c.judge.backend = "http"
    c.judge.base_url = "http://localhost:8000/v1"
    c.judge.model = "judge"
    c.judge.concurrency = 16
    c.sampler.batch_size = 64
    c.mesh.data = 1
    c.mesh.fsdp = -1  # the model sharded over every device of the host
    c.out = "runs/eval/paper"
    return c
