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
    # R1-length traces fit, and an intervention prompt (prompt + prefix + trigger) fits the sampler
    assert config.sampling.max_new_tokens >= 8192
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
