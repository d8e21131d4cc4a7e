"""The real-recipe pipeline configs load, carry the paper's settings and pass the build-pairs
settings validation (with a model directory that exists here)."""

import runpy
from pathlib import Path

import pytest

from ipo_jax.pipeline.intervene import InterventionConfig
from ipo_jax.pipeline.triggers import DEFAULT_TRIGGERS
from ipo_jax.sampling import SamplingConfig

CONFIGS = Path(__file__).parents[1] / "configs"
MODELS = {
    "pipeline_r1_distill_llama_8b.py": "DeepSeek-R1-Distill-Llama-8B",
    "pipeline_r1_distill_qwen_7b.py": "DeepSeek-R1-Distill-Qwen-7B",
    "pipeline_qwen3_8b.py": "Qwen3-8B",
}


@pytest.mark.parametrize("name", sorted(MODELS))
def test_paper_pipeline_config_loads_and_validates(name, tmp_path):
    from ipo_jax.validation import validate_settings

    config = runpy.run_path(str(CONFIGS / name))["get_config"]()
    assert config.model.init == f"hf:/models/{MODELS[name]}"
    # the paper's settings
    assert (config.sampling.temperature, config.sampling.top_p) == (0.6, 0.95)
    assert config.intervention.rounds == 3 and config.intervention.max_generations_per_prompt == 14
    assert config.csr.num_samples == 32 and config.triggers_file == "" and len(DEFAULT_TRIGGERS) == 6
    assert config.judge.backend == "http" and config.judge.base_url and config.judge.model
    assert config.judge.max_tokens >= 2048 and config.detector.backend == ""  # the detector shares the judge
    assert config.build_pairs.kind == "ipo" and config.prompts == "UCSC-VLAA/STAR-1"
    # R1-length traces of some thousands of tokens fit, and an intervention prompt (prompt + a prefix
    # of up to one generation + trigger) fits the sampler; the pairs fit training (test below)
    assert config.sampling.max_new_tokens >= 4096
    assert config.sampler.max_prompt_length >= config.sampling.max_new_tokens + 1024
    SamplingConfig(temperature=config.sampling.temperature, top_p=config.sampling.top_p,
                   top_k=config.sampling.top_k, max_new_tokens=config.sampling.max_new_tokens)
    InterventionConfig(**config.intervention)

    (tmp_path / "model").mkdir()  # the settings check looks for the model directory
    config.model.init = f"hf:{tmp_path / 'model'}"
    config.out = str(tmp_path / "out")
    validate_settings("build-pairs", config)
    config.csr.trajectories = str(tmp_path / "trajectories.jsonl")  # csr reads `sample`'s output
    (tmp_path / "trajectories.jsonl").write_text("{}\n")
    validate_settings("csr", config)


RUNS = ("qwen3_8b", "r1_distill_qwen_7b", "r1_distill_llama_8b")


@pytest.mark.parametrize("run", RUNS)
def test_the_pipeline_cannot_build_a_pair_longer_than_training_takes(run):
    """configs/pipeline_<run>.py against configs/train_<run>.py and train_<run>_stage2.py (whose
    over-refusal pairs come from the same pipeline config): the longest pair the pipeline can write
    (an intervention prompt of at most sampler.max_prompt_length, then one more generation, plus the
    original's rejected tail; or a prompt and two generations) fits data.max_length, so training
    drops none of them for length (it never cuts one)."""
    from ipo_jax.pipeline.config import longest_pair_tokens

    pipeline = runpy.run_path(str(CONFIGS / f"pipeline_{run}.py"))["get_config"]()
    bound = pipeline.sampler.max_prompt_length + 2 * pipeline.sampling.max_new_tokens
    assert longest_pair_tokens(pipeline) == bound
    for name in (f"train_{run}.py", f"train_{run}_stage2.py"):
        train = runpy.run_path(str(CONFIGS / name))["get_config"]()
        assert bound <= train.data.max_length, (
            f"{name}: data.max_length {train.data.max_length} < {bound}, the longest pair of pipeline_{run}.py")
        assert train.data.max_dropped_share == 0.05
        # the pair files training reads are the ones this pipeline config writes
        assert train.data.pairs.split(",")[0] == f"{pipeline.out}/pairs.jsonl"
