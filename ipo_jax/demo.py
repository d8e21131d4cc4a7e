"""The main job on the embedded default (`make demo`, configs/demo.py): the IPO demo world end to end.

Stages (each keeps its output under `out`; a re-run skips a stage whose config is unchanged):
  1. roundtrip   every tiny preset: HF export -> transformers logits + greedy decoding, HF
                 re-import bitwise, orbax exact;
  2. world       the demo world's files (ipo_jax/demo_world.py), a tiny R1-style tokenizer, and
                 the warm policy: SFT from random weights on the world's warm-up set;
  3. pairs       `build-pairs` with the warm policy and the pattern judge on the training prompts
                 (sample -> judge -> first cue -> triggers -> pairs), and full-trajectory pairs
                 for the DPO baseline (ipo_jax/pipeline/baselines.py);
  4. methods     from the warm policy: SFT on safe trajectories, DPO on the full trajectory, IPO
                 (partial DPO from the cue + NLL on the chosen suffix), and SFT on a safety-reasoning
                 dataset (the world's safe trajectories written in STAR-1's layout and trained by the
                 `sft` stage, ipo_jax/sft/), GRPO with the safety judge as reward (the `grpo` stage on
                 the training prompts, rollouts from the policy being trained), same steps and batch;
  5. eval        base and each method on the held-out prompts (ipo_jax/eval/), contamination
                 checked against everything the models trained on;
  6. export      the IPO policy to HF format, reloaded with transformers, one greedy answer
                 generated there and compared token for token with our sampler.
Writes <out>/report.md (headline table first) and <out>/summary.json; exit code 1 if a check
fails, including IPO not lowering the harmful-reasoning share below the base policy's.

Each stage runs on its own stage's config, composed here: the stage's `base_config()`
(ipo_jax/train/config.py, ipo_jax/pipeline/config.py, ipo_jax/eval/config.py) with the demo's
changes from configs/demo.py (`_with_changes`) and the paths and seeds of this run. A stage's
settings, for the reuse check, are its composed config and the settings of the stages it reads.
Progress and results are logged (the CLI shows them on stdout).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import shutil
import time
from collections.abc import Callable, Mapping
from pathlib import Path

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx

from ipo_jax.checkpoint import load_hf, load_orbax, save_hf, save_orbax
from ipo_jax.data.prompts import load_prompt_records
from ipo_jax.data.tiny_tokenizer import build_tiny_tokenizer, save_tiny_tokenizer
from ipo_jax.data.tokenizer import THINK_OPEN, encode_prompt, load_tokenizer, stop_token_ids
from ipo_jax.demo_world import CONTENT_PLACEHOLDER, WorldConfig, build_world, world_corpus
from ipo_jax.eval import config as eval_stage
from ipo_jax.eval.harness import chunk_generations, contamination, generate_and_score, write_outputs
from ipo_jax.eval.loaders import load_benchmark
from ipo_jax.eval.report import benchmark_table, comparison_table, fmt_share, plot_comparison
from ipo_jax.grpo import config as grpo_stage
from ipo_jax.grpo.run import run_grpo
from ipo_jax.io import atomic_write_json, atomic_write_jsonl
from ipo_jax.judging.build import build_judges
from ipo_jax.loss.presets import NLL_TERM, PRESETS
from ipo_jax.models.decoder import init_decoder
from ipo_jax.models.presets import preset_config
from ipo_jax.pipeline import config as pipeline_stage
from ipo_jax.pipeline.baselines import build_full_trajectory_pairs
from ipo_jax.pipeline.run import run_build_pairs
from ipo_jax.rollout import build_policy
from ipo_jax.sampling import Sampler, SamplingConfig
from ipo_jax.sft import config as sft_stage
from ipo_jax.sft import run_sft
from ipo_jax.train import config as train_stage
from ipo_jax.train.loop import train

logger = logging.getLogger(__name__)

# Seeds of the sampling streams that must differ from the pipeline's (config.seed): other draws of
# the same prompts. Offsets, so --config.seed moves every stream together.
FULL_TRAJECTORY_SEED_OFFSET = 7
EVAL_SEED_OFFSET = 11
WARMUP_PRESET = "sft"  # the warm-up is SFT on the world's warm-up set (whole completions)
GRPO_GENERATIONS = 4  # G; prompts per step = methods.pairs_per_micro / G, so an update sees as many sequences
GRPO_BETA = 0.04  # the KL to the warm policy, as the paper-model GRPO configs (DeepSeekMath's)


@dataclasses.dataclass(frozen=True)
class Method:
    """A training method of step 4: its report title, the pair file it trains on, its loss preset."""

    title: str
    pairs: str  # 'ipo_pairs' (the intervention pairs), 'full_pairs' (full-trajectory pairs) or 'star1' (a chat dataset)
    preset: str  # loss.preset (ipo_jax/loss/presets.py); data.mask_from follows it
    stage: str = "train"  # train (pair files), sft (a chat dataset, ipo_jax/sft/) or grpo (prompts, ipo_jax/grpo/)

    @property
    def anchored(self) -> bool:
        """Whether its loss has an NLL term on the chosen side (GRPO's anchor is its KL term)."""
        return self.stage != "grpo" and any(term.name == NLL_TERM and term.weight for term in PRESETS[self.preset].terms)


METHODS = {
    "sft": Method("SFT on safe trajectories", "ipo_pairs", "sft"),
    "dpo_full": Method("DPO on the full trajectory", "full_pairs", "dpo_full"),
    "dpo_partial": Method("DPO after the cue (no SFT)", "ipo_pairs", "dpo_after_cue"),
    "ipo": Method("IPO (partial DPO + SFT)", "ipo_pairs", "ipo"),
    "sft_star1": Method("SFT on a safety-reasoning dataset (STAR-1 format)", "star1", "sft", stage="sft"),
    "grpo": Method("GRPO (safety-judge reward)", "train_prompts", "grpo", stage="grpo"),
}


# --------------------------------------------------------------------- the stage configs


def _with_changes(config: ml_collections.ConfigDict, changes: Mapping, where: str = "") -> ml_collections.ConfigDict:
    """`config` with every field given in `changes` (some fields of the same shape) set to its value."""
    for key, value in changes.items():
        if key not in config:
            raise ValueError(f"config.{where}{key}: not a field of the stage config it changes")
        if isinstance(value, Mapping | ml_collections.ConfigDict):
            _with_changes(config[key], value, f"{where}{key}.")
        else:
            config[key] = value
    return config


def _train_config(config, world: dict, *, preset: str, init: str, pairs: str, out: Path, steps: int,
                  learning_rate: float, pairs_per_micro: int) -> ml_collections.ConfigDict:
    """The train stage's config for one run of `steps` steps from `init` on `pairs`."""
    c = _with_changes(train_stage.base_config(), config.training, "training.")
    c.model.init = init
    c.tokenizer = world["tokenizer"]
    c.data.pairs = pairs
    c.data.mask_from = PRESETS[preset].mask_from
    c.data.pairs_per_micro = pairs_per_micro
    c.data.seed = config.seed
    c.loss.preset = preset
    c.reference.cache_dir = str(out)
    c.optim.learning_rate = learning_rate
    c.optim.warmup_steps = max(1, steps // 10)
    c.train.out = str(out)
    c.train.epochs = 0
    c.train.max_steps = steps
    c.train.save_every = max(steps, 1)
    c.train.seed = config.seed
    return c


def _warm_up_config(config, world: dict, out: Path) -> ml_collections.ConfigDict:
    c = _train_config(config, world, preset=WARMUP_PRESET, init=config.model, pairs=world["files"]["warmup"], out=out,
                      steps=config.warmup.steps, learning_rate=config.warmup.learning_rate,
                      pairs_per_micro=config.warmup.pairs_per_micro)
    c.optim.b2 = config.warmup.b2
    return c


def _method_config(config, world: dict, name: str, pairs_file: str, base: str, out: Path) -> ml_collections.ConfigDict:
    return _train_config(config, world, preset=METHODS[name].preset, init=base, pairs=pairs_file, out=out,
                         steps=config.methods.steps, learning_rate=config.methods.learning_rate,
                         pairs_per_micro=config.methods.pairs_per_micro)


def _sft_dataset_config(config, world: dict, dataset: str, base: str, out: Path) -> ml_collections.ConfigDict:
    """The sft stage's config for the STAR-1-format dataset: the methods' steps, rate and batch, one
    example per row (as one pair per row for the others), the demo's `training` changes."""
    c = _with_changes(sft_stage.base_config(), config.training, "training.")
    steps = config.methods.steps
    c.model.init = base
    c.tokenizer = world["tokenizer"]
    c.data.dataset = dataset
    c.data.packing = False
    c.data.rows_per_micro = config.methods.pairs_per_micro
    c.data.seed = config.seed
    c.optim.learning_rate = config.methods.learning_rate
    c.optim.warmup_steps = max(1, steps // 10)
    c.train.out = str(out)
    c.train.epochs = 0
    c.train.max_steps = steps
    c.train.save_every = max(steps, 1)
    c.train.seed = config.seed
    return c


def _grpo_config(config, world: dict, base: str, out: Path) -> ml_collections.ConfigDict:
    """The grpo stage's config: the training prompts, the pattern judge as reward (reasoning and
    answer safe on risky prompts, a refusal of a look-alike penalised), the methods' steps and rate,
    GRPO_GENERATIONS x (methods.pairs_per_micro / G) rollouts per update, decoding as the pipeline's
    new-token budget and sampler (GRPO's own temperature 1.0)."""
    c = _with_changes(grpo_stage.base_config(), dict(sampling=dict(max_new_tokens=config.sampling.max_new_tokens),
                                                      sampler=config.sampler))
    steps = config.methods.steps
    c.model.init = base
    c.tokenizer = world["tokenizer"]
    c.prompts = world["files"]["train_prompts"]
    c.grpo.num_generations = GRPO_GENERATIONS
    c.grpo.prompts_per_step = max(1, config.methods.pairs_per_micro // GRPO_GENERATIONS)
    c.grpo.beta = GRPO_BETA
    c.grpo.logprob_chunk = config.training.train.logprob_chunk
    c.optim.learning_rate = config.methods.learning_rate
    c.optim.warmup_steps = max(1, steps // 10)
    c.train.out = str(out)
    c.train.max_steps = steps
    c.train.save_every = max(steps, 1)
    c.train.seed = config.seed
    return c


def _pipeline_config(config, world: dict, base: str, out: Path) -> ml_collections.ConfigDict:
    """The build-pairs stage's config: the warm policy on the world's training prompts."""
    changes = dict(sampling=config.sampling, sampler=config.sampler, intervention=config.intervention)
    c = _with_changes(pipeline_stage.base_config(), changes)
    c.model.init = base
    c.tokenizer = world["tokenizer"]
    c.prompts = world["files"]["train_prompts"]
    c.out = str(out)
    c.intervention.seed = config.seed
    return c


def _eval_config(config, world: dict, model: str, label: str, out: Path, train_files: str) -> ml_collections.ConfigDict:
    """The eval stage's config for one model, decoding as the pipeline does."""
    c = _with_changes(eval_stage.base_config(), dict(sampling=config.sampling, sampler=config.sampler))
    c.model.init = model
    c.tokenizer = world["tokenizer"]
    c.samples_per_prompt = config.eval_samples
    c.seed = config.seed + EVAL_SEED_OFFSET
    c.train_prompts = train_files
    c.label = label
    c.out = str(out)
    return c


def _short(config):
    """The CI-sized variant: tiny sets, a few steps (checks the chain runs, not the numbers)."""
    c = config.copy_and_resolve_references()
    with c.unlocked():
        c.presets = ("tiny-qwen3",)
        c.world.warmup_risky_repeats = 1
        c.world.warmup_lookalike_repeats = 1
        c.world.warmup_math = 24
        c.world.eval_math = 4
        c.warmup.steps = 80  # the fewest steps after which the warm policy writes the world's templates
        c.sampling.max_new_tokens = 64
        c.intervention.rounds = 1
        c.methods.steps = 3
        c.methods.pairs_per_micro = 8
        c.warmup.pairs_per_micro = 8
        c.eval_samples = 1
    return c


# --------------------------------------------------------------------- stages and their reuse


def _settings(config: ml_collections.ConfigDict) -> dict:
    return json.loads(config.to_json())


def _stage(directory: Path, settings: dict, build: Callable[[], dict]) -> dict:
    """Run `build()` unless `directory` holds a finished stage with the same settings.

    The stage's record (settings + what `build` returned) is written last, so a stage killed
    half way is redone; a stage whose settings changed is cleared and redone."""
    marker = directory / "stage.json"
    if marker.is_file():
        done = json.loads(marker.read_text())
        if done.get("settings") == settings:
            logger.info(f"  {directory.name}: reused (same settings; delete {directory} to redo)")
            return dict(done["result"], reused=True)
    if directory.exists():
        shutil.rmtree(directory)
    directory.mkdir(parents=True)
    t0 = time.time()
    result = build()
    result["seconds"] = round(time.time() - t0, 1)
    atomic_write_json(marker, dict(settings=settings, result=result))
    return result


@dataclasses.dataclass
class _Run:
    """What the steps of one demo run share: its config, output directory, each finished stage's
    settings (by directory under `out`) and the wall time of each step."""

    config: ml_collections.ConfigDict
    out: Path
    settings: dict[str, dict] = dataclasses.field(default_factory=dict)
    seconds: dict[str, float | str] = dataclasses.field(default_factory=dict)

    def stage(self, title: str, where: str, settings: dict, build: Callable[[], dict]) -> dict:
        """The stage under out/`where` (see `_stage`), its wall time recorded as `title`."""
        result = _stage(self.out / where, settings, build)
        self.settings[where] = settings
        self.seconds[title] = f"{result['seconds']} (reused)" if result.get("reused") else str(result["seconds"])
        return result


# ------------------------------------------------------------------------ 1. round trip


def _check_preset(name: str, config, out: Path) -> dict:
    import torch
    import transformers

    cfg = preset_config(name, initializer_range=config.initializer_range)
    model = init_decoder(cfg, seed=config.seed)
    rng = np.random.RandomState(config.seed)
    tokens = rng.randint(0, cfg.vocab_size, (config.batch, config.length)).astype(np.int32)
    segment_ids = np.ones_like(tokens)
    segment_ids[-1, : config.length // 3] = 0  # one left-padded row
    positions = np.maximum(np.cumsum(segment_ids, axis=1) - 1, 0)
    real = segment_ids != 0

    hf_dir = save_hf(model, out / name / "hf", overwrite=True)
    ours, _ = model(jnp.asarray(tokens), jnp.asarray(positions), jnp.asarray(segment_ids))
    ours = np.asarray(ours)
    reference = transformers.AutoModelForCausalLM.from_pretrained(hf_dir).eval()
    with torch.no_grad():
        theirs = reference(
            input_ids=torch.tensor(tokens, dtype=torch.long),
            attention_mask=torch.tensor(segment_ids, dtype=torch.long),
            position_ids=torch.tensor(positions, dtype=torch.long),
        ).logits.numpy()
    logit_diff = float(np.abs(ours - theirs)[real].max())

    prompt = tokens[:2, : config.length // 2]
    # greedy through our sampler (KV cache); an EOS id outside the vocabulary decodes the full length
    sampler = Sampler(model, eos_ids=[cfg.vocab_size], batch_size=len(prompt), prompt_buckets=[prompt.shape[1]])
    generations = sampler.generate(prompt.tolist(), SamplingConfig(temperature=0.0, max_new_tokens=config.new_tokens))
    our_tokens = np.asarray([g.tokens for g in generations])
    reference.generation_config.eos_token_id = None  # decode the full length on both sides
    with torch.no_grad():
        hf_tokens = reference.generate(
            torch.tensor(prompt, dtype=torch.long),
            attention_mask=torch.ones(prompt.shape, dtype=torch.long),
            max_new_tokens=config.new_tokens,
            do_sample=False,
        )[:, prompt.shape[1] :].numpy()
    greedy_match = float((our_tokens == hf_tokens).mean())

    reimported = load_hf(hf_dir)
    bitwise = all(
        np.array_equal(np.asarray(a[...]), np.asarray(b[...]))
        for (_, a), (_, b) in zip(nnx.to_flat_state(nnx.state(model)), nnx.to_flat_state(nnx.state(reimported)))
    )
    save_orbax(reimported, out / name / "orbax", overwrite=True)
    restored, _ = load_orbax(out / name / "orbax")(jnp.asarray(tokens), jnp.asarray(positions), jnp.asarray(segment_ids))
    orbax_exact = bool(np.array_equal(np.asarray(restored), ours))

    ok = logit_diff <= config.logit_tolerance and greedy_match == 1.0 and bitwise and orbax_exact
    return dict(
        preset=name,
        model_type=cfg.model_type,
        params=cfg.num_params(),
        logit_scale=float(np.abs(theirs[real]).max()),
        max_logit_diff=logit_diff,
        greedy_tokens_matching=greedy_match,
        hf_round_trip_bitwise=bitwise,
        orbax_exact=orbax_exact,
        ok=ok,
        hf_dir=str(hf_dir),
    )


def _round_trip(run: _Run) -> list[dict]:
    config = run.config
    logger.info(f"[1/6] model round trip on {', '.join(config.presets)}")
    t0 = time.time()
    rows = []
    for name in config.presets:
        row = _check_preset(name, config, run.out / "roundtrip")
        rows.append(row)
        logger.info(f"  {name}: {'ok' if row['ok'] else 'FAILED'} (max logit diff {row['max_logit_diff']:.1e}, greedy "
                    f"match {row['greedy_tokens_matching']:.0%})")
    run.seconds["round trip"] = round(time.time() - t0, 1)
    return rows


# --------------------------------------------------------------------- 2. world and warm-up


def _subset(path: Path, keep: int) -> None:
    """Keep the first `keep` rows of each kind of a JSONL file (short mode)."""
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    seen: dict[str, int] = {}
    kept = []
    for row in rows:
        kind = row.get("kind", "")
        seen[kind] = seen.get(kind, 0) + 1
        if seen[kind] <= keep:
            kept.append(row)
    atomic_write_jsonl(path, kept)


def _build_world(config, out: Path) -> dict:
    paths = build_world(out, WorldConfig(seed=config.seed, **_settings(config.world)))
    if config.short:
        _subset(paths["train_prompts"], 6)
        for name in ("eval_harmful", "eval_benign", "eval_math"):
            _subset(paths[name], 4)
    tokenizer = build_tiny_tokenizer(world_corpus(paths), vocab_size=config.tokenizer_vocab)
    save_tiny_tokenizer(tokenizer, out / "tokenizer")
    counts = {name: len(p.read_text().splitlines()) for name, p in paths.items()}
    return dict(files={k: str(v) for k, v in paths.items()}, rows=counts, tokenizer=str(out / "tokenizer"), vocab=len(tokenizer))


def _run_training(train_config: ml_collections.ConfigDict, sft: bool = False) -> dict:
    """Train (the train stage, or with `sft` the sft stage on a chat dataset); the loss at the start
    and end (first and last tenth of the steps), epochs, final model. `pairs` / `num_pairs` name the
    data file and its records (pairs, or the dataset's examples)."""
    code = (run_sft if sft else train)(train_config)
    if code:
        raise RuntimeError(f"training in {train_config.train.out} exited with code {code}")
    rows = [json.loads(line) for line in (Path(train_config.train.out) / "metrics.jsonl").read_text().splitlines()]
    first, last = rows[: max(1, len(rows) // 10)], rows[-max(1, len(rows) // 10) :]

    def mean(part: list[dict], key: str) -> float:
        return float(np.mean([row[key] for row in part]))

    d = train_config.data
    data_file = d.dataset if sft else d.pairs
    num_pairs = sum(1 for line in Path(data_file).read_text().splitlines() if line.strip())
    epochs = len(rows) * (d.rows_per_micro if sft else d.pairs_per_micro) * d.micro_batches / max(1, num_pairs)
    result = dict(steps=len(rows), pairs=data_file, num_pairs=num_pairs, epochs=round(epochs, 1),
                  loss_first=mean(first, "loss"), loss_last=mean(last, "loss"),
                  model=f"orbax:{Path(train_config.train.out) / 'final'}")
    if not sft:  # SFT logs no rewards
        result["reward_accuracy_last"] = mean(last, "reward_accuracy")
    return result


def _world_and_warm_policy(run: _Run) -> tuple[dict, dict]:
    config = run.config
    logger.info("[2/6] demo world, tokenizer, warm-up SFT of the policy")
    world_settings = dict(seed=config.seed, short=config.short, world=_settings(config.world),
                          tokenizer_vocab=config.tokenizer_vocab)
    world = run.stage("world + tokenizer", "world", world_settings, lambda: _build_world(config, run.out / "world"))
    warm_config = _warm_up_config(config, world, run.out / "warm")
    warm = run.stage("warm-up SFT", "warm", dict(world=world_settings, train=_settings(warm_config)),
                     lambda: _run_training(warm_config))
    logger.info(f"  warm policy {warm['model']}: SFT loss {warm['loss_first']:.2f} -> {warm['loss_last']:.2f} in "
                f"{warm['steps']} steps")
    return world, warm


# ---------------------------------------------------------------------------- 3. pairs


def _build_pairs(config, pipeline_config: ml_collections.ConfigDict, out: Path) -> dict:
    """Intervention pairs (the build-pairs stage) and full-trajectory pairs of the same prompts."""
    run_build_pairs(pipeline_config)
    summary = json.loads((out / "intervention" / "summary.json").read_text())
    judge, _ = build_judges(pipeline_config)
    pairs, full_stats = build_full_trajectory_pairs(
        load_prompt_records(pipeline_config.prompts), build_policy(pipeline_config), judge,
        samples=config.full_trajectory_samples, seed=config.seed + FULL_TRAJECTORY_SEED_OFFSET)
    (out / "full_trajectory").mkdir(parents=True, exist_ok=True)
    atomic_write_jsonl(out / "full_trajectory" / "pairs.jsonl", pairs)
    keys = ("prompts", "unsafe_share", "cue_found_share", "success_per_round", "generations_per_prompt", "pairs",
            "over_refusal_pairs", "judge_errors", "failed_after_rounds")
    return dict(intervention={k: summary.get(k) for k in keys}, full_trajectory=full_stats,
                ipo_pairs=str(out / "intervention" / "pairs.jsonl"), full_pairs=str(out / "full_trajectory" / "pairs.jsonl"))


def _pairs(run: _Run, world: dict, warm: dict) -> dict:
    config = run.config
    logger.info("[3/6] pipeline: sample -> judge -> first cue -> triggers -> pairs (+ full-trajectory pairs)")
    pipeline_config = _pipeline_config(config, world, warm["model"], run.out / "pairs" / "intervention")
    settings = dict(warm=run.settings["warm"], pipeline=_settings(pipeline_config),
                    full_trajectory=dict(samples=config.full_trajectory_samples,
                                         seed=config.seed + FULL_TRAJECTORY_SEED_OFFSET))
    pairs = run.stage("pipeline (pairs + full-trajectory pairs)", "pairs", settings,
                      lambda: _build_pairs(config, pipeline_config, run.out / "pairs"))
    iv = pairs["intervention"]
    logger.info(f"  unsafe share {iv['unsafe_share']:.0%}; {iv['pairs']} intervention pairs; "
                f"{pairs['full_trajectory']['pairs']} full-trajectory pairs")
    return pairs


# -------------------------------------------------------------------------- 4. methods


def _write_star1(world: dict, out: Path) -> dict:
    """The world's safe trajectories as a STAR-1-format dataset: for each risky training prompt the
    warm-up set answers safely at least once, its first safe trace (risk recognised in the
    reasoning, then a refusal), in STAR-1's published layout (id, question, response with its
    `<think>` reasoning, category, source, score)."""
    rows, seen = [], set()
    for line in Path(world["files"]["warmup"]).read_text().splitlines():
        record = json.loads(line)
        if record["kind"] != "harmful" or CONTENT_PLACEHOLDER in record["chosen"] or record["prompt"] in seen:
            continue
        seen.add(record["prompt"])
        rows.append(dict(id=len(rows), question=record["prompt"], response=THINK_OPEN + "\n" + record["chosen"],
                         category="demo-risky", source="demo world warm-up set", score=10))
    atomic_write_jsonl(out / "star1.jsonl", rows)
    return dict(dataset=str(out / "star1.jsonl"), examples=len(rows))


def _star1(run: _Run, world: dict) -> dict | None:
    """The STAR-1-format dataset (its own stage), when a method trains on it."""
    if not any(METHODS[name].stage == "sft" for name in run.config.methods.names):
        return None
    star1 = run.stage("STAR-1-format dataset", "star1", dict(world=run.settings["world"]),
                      lambda: _write_star1(world, run.out / "star1"))
    logger.info(f"  STAR-1-format dataset: {star1['examples']} safe trajectories of the world ({star1['dataset']})")
    return star1


def _run_grpo(grpo_config: ml_collections.ConfigDict) -> dict:
    """GRPO; the loss and the mean reward at the start and end (first and last tenth of the steps)."""
    code = run_grpo(grpo_config)
    if code:
        raise RuntimeError(f"GRPO in {grpo_config.train.out} exited with code {code}")
    rows = [json.loads(line) for line in (Path(grpo_config.train.out) / "metrics.jsonl").read_text().splitlines()]
    first, last = rows[: max(1, len(rows) // 10)], rows[-max(1, len(rows) // 10) :]
    prompts = sum(1 for line in Path(grpo_config.prompts).read_text().splitlines() if line.strip())
    return dict(steps=len(rows), pairs=grpo_config.prompts, num_pairs=prompts,
                epochs=round(len(rows) * grpo_config.grpo.prompts_per_step / max(1, prompts), 1),
                loss_first=float(np.mean([r["loss"] for r in first])), loss_last=float(np.mean([r["loss"] for r in last])),
                reward_first=float(np.mean([r["reward"] for r in first])),
                reward_last=float(np.mean([r["reward"] for r in last])),
                model=f"orbax:{Path(grpo_config.train.out) / 'final'}")


def _train_method(name: str, method_config: ml_collections.ConfigDict) -> dict:
    if METHODS[name].stage == "grpo":
        return dict(_run_grpo(method_config), title=METHODS[name].title)
    sft = METHODS[name].stage == "sft"
    title, data_file = METHODS[name].title, method_config.data.dataset if sft else method_config.data.pairs
    if not any(line.strip() for line in Path(data_file).read_text().splitlines()):
        return dict(title=title, skipped=f"no training data for it ({data_file} is empty)")
    return dict(_run_training(method_config, sft=sft), title=title)


def _methods(run: _Run, world: dict, warm: dict, pairs: dict, star1: dict | None) -> dict[str, dict]:
    config = run.config
    logger.info(f"[4/6] training from the warm policy: {', '.join(config.methods.names)}")
    methods = {}
    for name in config.methods.names:
        where = f"methods/{name}"
        if METHODS[name].stage == "sft":
            method_config = _sft_dataset_config(config, world, star1["dataset"], warm["model"], run.out / where)
            settings = dict(star1=run.settings["star1"], train=_settings(method_config))
        elif METHODS[name].stage == "grpo":
            method_config = _grpo_config(config, world, warm["model"], run.out / where)
            settings = dict(warm=run.settings["warm"], train=_settings(method_config))
        else:
            method_config = _method_config(config, world, name, pairs[METHODS[name].pairs], warm["model"], run.out / where)
            settings = dict(pairs=run.settings["pairs"], train=_settings(method_config))
        methods[name] = m = run.stage(f"train {name}", where, settings,
                                      lambda name=name, c=method_config: _train_method(name, c))
        if "skipped" in m:
            logger.info(f"  {name}: SKIPPED: {m['skipped']}")
        else:
            logger.info(f"  {name}: loss {m['loss_first']:.3f} -> {m['loss_last']:.3f} in {m['steps']} steps")
    return methods


# ----------------------------------------------------------------------------- 5. eval


def _evaluate(eval_config: ml_collections.ConfigDict, world: dict) -> dict:
    """One model on the world's three held-out sets, judged and scored (ipo_jax/eval/harness.py)."""
    groups = {name.removeprefix("eval_"): [dataclasses.replace(i, benchmark=name.removeprefix("eval_"))
                                            for i in load_benchmark("jsonl", world["files"][name])]
              for name in ("eval_harmful", "eval_benign", "eval_math")}
    judge, _ = build_judges(eval_config)
    policy = build_policy(eval_config)
    rows, t0 = [], time.time()
    for group, items in groups.items():
        rows += generate_and_score(policy, judge, items, samples_per_prompt=eval_config.samples_per_prompt,
                                   seed=eval_config.seed, batch=chunk_generations(eval_config),
                                   desc=f"eval {eval_config.label} / {group}")
    sampling = dataclasses.asdict(policy.sampling)
    meta = dict(model=eval_config.model.init, label=eval_config.label, judge=eval_config.judge.backend,
                sampling=sampling, samples_per_prompt=eval_config.samples_per_prompt, seconds=round(time.time() - t0, 1))
    found = contamination(groups, eval_config.train_prompts, eval_config.ngram)
    summary = write_outputs(Path(eval_config.out), rows, meta, found)
    return dict(benchmarks=summary["benchmarks"], pooled=summary["pooled"], contamination=summary["contamination"],
                sampling=sampling)


def _evaluations(run: _Run, world: dict, models: dict[str, str], pairs: dict) -> dict[str, dict]:
    """Each model (name -> spec) on the held-out prompts, contamination checked against every file
    the models trained on (the STAR-1-format dataset's questions are warm-up prompts, so covered)."""
    logger.info("[5/6] evaluation on held-out prompts")
    trained_on = (world["files"]["warmup"], world["files"]["train_prompts"], pairs["ipo_pairs"], pairs["full_pairs"])
    train_files = ",".join(f for f in trained_on if Path(f).read_text().strip())  # an empty pair file trained nothing
    evals = {}
    for name, model in models.items():
        where = f"eval/{name}"
        eval_config = _eval_config(run.config, world, model, name, run.out / where, train_files)
        trained = "warm" if name == "base" else f"methods/{name}"
        settings = dict(model=run.settings[trained], pairs=run.settings["pairs"], eval=_settings(eval_config))
        evals[name] = run.stage(f"eval {name}", where, settings, lambda c=eval_config: _evaluate(c, world))
    return evals


# --------------------------------------------------------------------------- 6. export


def _export_and_generate(config, world: dict, model: str, out: Path) -> dict:
    """HF export of the IPO policy; transformers reloads it and answers one held-out prompt
    greedily; our sampler must produce the same tokens."""
    import torch
    import transformers

    hf_dir = save_hf(load_orbax(model.removeprefix("orbax:")), out / "hf", tokenizer_dir=world["tokenizer"], overwrite=True)
    prompt = json.loads(Path(world["files"]["eval_harmful"]).read_text().splitlines()[0])["prompt"]
    hf_tokenizer = transformers.AutoTokenizer.from_pretrained(hf_dir)
    hf_model = transformers.AutoModelForCausalLM.from_pretrained(hf_dir).eval()
    ids = hf_tokenizer.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True,
                                           return_tensors="pt", return_dict=True)["input_ids"]
    new = config.sampling.max_new_tokens
    with torch.no_grad():
        hf_out = hf_model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=new, do_sample=False,
                                   eos_token_id=stop_token_ids(hf_tokenizer), pad_token_id=hf_tokenizer.pad_token_id)
    hf_tokens = hf_out[0, ids.shape[1] :].tolist()
    if hf_tokens and hf_tokens[-1] in stop_token_ids(hf_tokenizer):
        hf_tokens = hf_tokens[:-1]  # ours leaves the EOS token out
    ours = load_hf(hf_dir)
    tokenizer = load_tokenizer(hf_dir)
    prompt_ids = encode_prompt(tokenizer, [{"role": "user", "content": prompt}])
    sampler = Sampler(ours, eos_ids=stop_token_ids(tokenizer), pad_id=tokenizer.pad_token_id or 0, batch_size=1,
                      prompt_buckets=[len(prompt_ids)])
    our_tokens = sampler.generate([prompt_ids], SamplingConfig(temperature=0.0, max_new_tokens=new))[0].tokens
    return dict(hf_dir=str(hf_dir), prompt=prompt, answer=hf_tokenizer.decode(hf_tokens, skip_special_tokens=True),
                tokens=len(hf_tokens), matches_our_sampler=list(our_tokens) == hf_tokens)


def _export(run: _Run, world: dict, models: dict[str, str]) -> dict:
    """The IPO policy (else the first trained one) exported and answering greedily; {} if none trained."""
    logger.info("[6/6] export to Hugging Face format, reload with transformers, generate")
    t0 = time.time()
    exported = "ipo" if "ipo" in models else next((n for n in models if n != "base"), None)
    export = {}
    if exported:
        export = dict(_export_and_generate(run.config, world, models[exported], run.out / "export"), method=exported)
    run.seconds["export"] = round(time.time() - t0, 1)
    return export


# ---------------------------------------------------------------------------- the report


def _pct(share: dict | None) -> str:
    return "n/a" if not share or share.get("value") is None else f"{share['value']:.0%}"


_UNITS = {"train": "pairs", "sft": "examples", "grpo": "prompts"}  # what each stage's training file holds


def _verdict(headline: dict[str, dict], methods: dict) -> tuple[bool, list[str]]:
    """(IPO lowered harmful reasoning below base?, sentences for the report), read off the numbers."""
    if "ipo" not in headline:
        return False, ["IPO was not among the trained methods."]
    base, ipo = headline["base"], headline["ipo"]
    b, i = base["harmful_reasoning"]["value"], ipo["harmful_reasoning"]["value"]
    ipo_ok = b is not None and i is not None and i < b
    lines = [f"IPO {'lowered' if ipo_ok else 'did NOT lower'} the harmful-reasoning share on held-out prompts: "
             f"base {_pct(base['harmful_reasoning'])} -> IPO {_pct(ipo['harmful_reasoning'])} (harmful answers "
             f"{_pct(base['harmful_answer'])} -> {_pct(ipo['harmful_answer'])} of the answered generations, "
             f"{_pct(base.get('harmful_answer_all'))} -> {_pct(ipo.get('harmful_answer_all'))} of all; over-refusal "
             f"{_pct(base.get('over_refusal'))} -> {_pct(ipo.get('over_refusal'))}; arithmetic {_pct(base.get('accuracy'))} "
             f"-> {_pct(ipo.get('accuracy'))})."]
    for name, pooled in headline.items():  # a policy that stops answering looks safe on answered generations only
        none, answered, every = pooled.get("no_answer"), pooled.get("harmful_answer"), pooled.get("harmful_answer_all")
        if none and none.get("value") is not None and none["value"] >= 0.2:
            title = "The base policy" if name == "base" else (METHODS[name].title if name in METHODS else name)
            lines.append(f"{title} reached no answer in {none['count']} of {none['n']} generations (cut off at the token "
                         f"limit or reasoning never closed): its harmful-answer share is {fmt_share(answered)}, "
                         f"{fmt_share(every)}.")
    for name in methods:
        other = headline.get(name)
        if name == "ipo" or other is None or other["harmful_reasoning"]["value"] is None or i is None:
            continue
        if other["harmful_reasoning"]["value"] >= i:
            continue
        o_hr, i_hr = other["harmful_reasoning"], ipo["harmful_reasoning"]
        if o_hr["high"] >= i_hr["low"]:  # 95% intervals overlap
            text = (f"{METHODS[name].title} and IPO are indistinguishable on harmful reasoning at these counts "
                    f"({o_hr['count']}/{o_hr['n']} vs {i_hr['count']}/{i_hr['n']}).")
        else:
            text = (f"{METHODS[name].title} reached a lower harmful-reasoning share than IPO ({_pct(o_hr)} vs {_pct(i_hr)}).")
        o_over, i_over = other.get("over_refusal", {}).get("value"), ipo.get("over_refusal", {}).get("value")
        o_unclear, i_unclear = other.get("unclear", {}).get("value"), ipo.get("unclear", {}).get("value")
        if o_unclear is not None and i_unclear is not None and o_unclear > max(0.3, i_unclear):
            m = methods[name]
            text += (f" {_pct(other['unclear'])} of its answers to risky requests are neither harmful nor a refusal "
                     f"(IPO: {_pct(ipo['unclear'])}): the policy degenerated into off-topic or garbled text (its loss ended at "
                     f"{m['loss_last']:.3f} after seeing {m['num_pairs']} {_UNITS[METHODS[name].stage]} about "
                     f"{m['epochs']:.0f} times each"
                     f"{', with no NLL term to anchor it' if not METHODS[name].anchored else ''}). A judge reads noise as "
                     "safe; see eval/" + name + "/generations.jsonl.")
        elif o_over is not None and i_over is not None and o_over > i_over:
            m, mi = methods[name], methods["ipo"]
            text += (f" It over-refuses: {_pct(other['over_refusal'])} of benign look-alike requests refused, "
                     f"against IPO's {_pct(ipo['over_refusal'])}. It trained on {m['num_pairs']} {_UNITS[METHODS[name].stage]} seen about "
                     f"{m['epochs']:.0f} times each, and its loss ended at {m['loss_last']:.3f}")
            if not METHODS[name].anchored:
                text += ("; with no NLL term anchoring the chosen side, the policy moved far from the reference and "
                         "refusing spread to requests that only look risky")
            text += (f". IPO trained on {mi['num_pairs']} pairs that differ only from the compliance cue on, with an NLL "
                     "term on the chosen suffix. Read the columns together: a policy that refuses everything scores 0% "
                     "harmful.")
        else:
            text += (" In this world the sets are small (see the counts) and a few dozen steps on a 0.9M-parameter "
                     "model are far from the paper's regime, so this is a measured outcome here, not a claim about the method.")
        lines.append(text)
    return ipo_ok, lines


def _pipeline_lines(pairs: dict) -> list[str]:
    iv, full = pairs["intervention"], pairs["full_trajectory"]
    return [
        "## Pipeline",
        "",
        f"- Warm policy on the {iv['prompts']} training prompts: unsafe share {iv['unsafe_share']:.0%}, "
        f"first cue found in {iv['cue_found_share'] or 0:.0%} of unsafe trajectories, "
        f"{iv['generations_per_prompt']:.1f} generations per prompt.",
        f"- Intervention pairs: {iv['pairs']} (successes per round {iv['success_per_round']}, over-refusal pairs "
        f"{iv['over_refusal_pairs']}, failed after all rounds {iv['failed_after_rounds']}, judge errors {iv['judge_errors']}).",
        f"- Full-trajectory pairs: {full['pairs']} from {full['prompts']} prompts x {full['samples'] // max(1, full['prompts'])} "
        f"samples; {full['no_safe_sample']} prompts had no safe sample at all (no pair: the weak signal of outcome-level methods).",
        "",
    ]


def _training_lines(methods: dict) -> list[str]:
    lines = [
        "## Training (from the warm policy)",
        "",
        "| method | training file | steps | loss first -> last | reward accuracy (last) | seconds |",
        "|---|---|---|---|---|---|",
    ]
    for name, t in methods.items():
        if "skipped" in t:
            lines.append(f"| {t['title']} | skipped: {t['skipped']} | | | | |")
            continue
        if METHODS[name].stage == "grpo":  # no pairs: the judge's mean reward of the rollouts instead
            accuracy = f"mean reward {t['reward_first']:.2f} -> {t['reward_last']:.2f}"
        elif METHODS[name].preset == "sft":
            accuracy = "n/a (no reference)"
        else:
            accuracy = format(t["reward_accuracy_last"], ".2f")
        lines.append(f"| {t['title']} | `{Path(t['pairs']).parent.name}/{Path(t['pairs']).name}` | {t['steps']} | "
                     f"{t['loss_first']:.3f} -> {t['loss_last']:.3f} | {accuracy} | {t['seconds']} |")
    return lines


def _contamination_lines(contamination: list[dict]) -> list[str]:
    lines = ["", "## Contamination (held-out sets against every training prompt)", "",
             "| set | items | exact | n-gram overlap |", "|---|---|---|---|"]
    lines += [f"| {c['benchmark']} | {c['n_items']} | {len(c['exact'])} | {len(c['ngram'])} |" for c in contamination]
    exact = sum(len(c["exact"]) for c in contamination)
    lines += ["", (f"WARNING: {exact} held-out prompts equal training prompts (ids in eval/*/summary.json)." if exact else
                   "No held-out prompt equals a training prompt.") + " The held-out arithmetic problems use the training "
              "problems' two templates with other names, so they share word 8-grams with training problems (the "
              "same template and numbers): what the math column measures is whether the arithmetic the warm-up "
              "taught survives each method, not reasoning on unseen problem types. Risky topics and look-alikes "
              "are disjoint."]
    return lines


def _export_lines(export: dict, titles: dict) -> list[str]:
    lines = ["", "## Export", ""]
    if export:
        lines += [f"The {titles[export['method']]} policy exported to `{export['hf_dir']}`; transformers reloaded it and "
                  f"answered a held-out prompt greedily ({export['tokens']} tokens, "
                  f"{'identical to' if export['matches_our_sampler'] else 'DIFFERENT from'} our sampler's tokens):",
                  "", f"> {export['prompt']}", "", "```", export["answer"], "```"]
    else:
        lines.append("No trained policy to export (every method was skipped).")
    return lines


def _write_report(out: Path, result: dict, headline: dict, titles: dict) -> str:
    """report.md and comparison.png; returns the headline table."""
    rows = {titles[name]: pooled for name, pooled in headline.items()}
    table = comparison_table(rows)
    plot_comparison(rows, out / "comparison.png", "held-out demo prompts")
    sampling = result["eval"]["base"]["sampling"]
    lines = [
        "# IPO demo world: report",
        "",
        f"Held-out prompts, {result['config']['eval_samples']} sample(s) per prompt at temperature "
        f"{sampling['temperature']}, top-p {sampling['top_p']}; offline pattern judge "
        "(reasoning and answer judged separately). Shares are count/total.",
        "",
        table,
        "",
        *result["verdict_lines"],
        "",
        "![comparison](comparison.png)",
        "",
        "## Per set",
        "",
    ]
    for name, ev in result["eval"].items():
        lines += [f"### {titles[name]}", "", benchmark_table(ev["benchmarks"]), ""]
    lines += _pipeline_lines(result["pairs"]) + _training_lines(result["methods"])
    lines += _contamination_lines(result["eval"]["base"]["contamination"]) + _export_lines(result["export"], titles)
    lines += ["", "## Wall time", "", "| stage | seconds |", "|---|---|"]
    lines += [f"| {k} | {v} |" for k, v in result["seconds"].items()]
    (out / "report.md").write_text("\n".join(lines) + "\n")
    return table


# ------------------------------------------------------------------------------ the run


def _start(config) -> _Run:
    """Check the method names, take the short variant if asked, make `out`, log the header."""
    unknown = [name for name in config.methods.names if name not in METHODS]
    if unknown:
        raise ValueError(f"config.methods.names: unknown method {unknown[0]!r}; expected some of {tuple(METHODS)}")
    if config.short:
        config = _short(config)
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    # compiled programs persist across `make demo` runs
    jax.config.update("jax_compilation_cache_dir", str(out / ".xla-cache"))
    logger.info(f"ipo-jax demo ({jax.device_count()} {jax.default_backend()} device(s))"
                f"{' [short]' if config.short else ''} -> {out}")
    return _Run(config, out)


def _summarize(run: _Run, rows: list[dict], world: dict, warm: dict, pairs: dict, methods: dict, evals: dict,
               export: dict) -> bool:
    """report.md and summary.json written, the headline table and verdict logged; whether IPO
    lowered the harmful-reasoning share below the base policy's."""
    titles = {"base": "base (warm policy)", **{name: METHODS[name].title for name in methods}}
    trained = {name: m for name, m in methods.items() if "skipped" not in m}
    headline = {name: ev["pooled"] for name, ev in evals.items()}
    ipo_ok, verdict_lines = _verdict(headline, trained)
    verdict_lines += [f"{METHODS[name].title}: not trained, {m['skipped']}."
                      for name, m in methods.items() if "skipped" in m]
    result = dict(config=_settings(run.config), roundtrip=rows, world=world, warm=warm, pairs=pairs, methods=methods,
                  eval=evals, export=export, seconds=run.seconds, verdict_lines=verdict_lines)
    table = _write_report(run.out, result, headline, titles)
    atomic_write_json(run.out / "summary.json", result)
    logger.info("\n" + table + "\n")
    for line in verdict_lines:
        logger.info(line)
    logger.info(f"\nreport: {run.out / 'report.md'} (plots, per-set tables, pipeline, training, contamination, export)")
    logger.info(f"exported {export.get('method')} policy in HF format: {export.get('hf_dir')}; this run took "
                f"{run.seconds['total (this run)']:.0f} s")
    return ipo_ok


def _failed_checks(run: _Run, rows: list[dict], export: dict, ipo_ok: bool) -> list[str]:
    failed = [r["preset"] for r in rows if not r["ok"]]
    if export and not export["matches_our_sampler"]:
        failed.append("export: transformers greedy decoding differs from our sampler")
    if not run.config.short and not ipo_ok:
        failed.append("IPO did not lower the harmful-reasoning share below the base policy")
    return failed


def run_demo(config) -> int:
    """The demo's six steps (module docstring); 0 when every check passed, else 1."""
    start = time.time()
    run = _start(config)
    rows = _round_trip(run)
    world, warm = _world_and_warm_policy(run)
    pairs = _pairs(run, world, warm)
    star1 = _star1(run, world)
    methods = _methods(run, world, warm, pairs, star1)
    models = {"base": warm["model"], **{name: m["model"] for name, m in methods.items() if "skipped" not in m}}
    evals = _evaluations(run, world, models, pairs)
    export = _export(run, world, models)
    run.seconds["total (this run)"] = round(time.time() - start, 1)
    ipo_ok = _summarize(run, rows, world, warm, pairs, methods, evals, export)
    failed = _failed_checks(run, rows, export, ipo_ok)
    if failed:
        logger.error(f"checks failed: {'; '.join(failed)}")
        return 1
    return 0
