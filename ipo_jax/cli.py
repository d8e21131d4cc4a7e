"""`ipo-jax <stage>`: thin command-line wrappers over the packages.

Stages:
  convert   HF safetensors <-> orbax (and HF -> HF to re-shard or change dtype)
  presets   list the model presets with parameter counts and weight memory
  sample    sample and judge one trajectory per prompt
  build-pairs  intervention: sample -> judge -> first cue -> trigger -> continue -> pairs
  csr       continuation safety ratio per sentence, safety triggers and compliance cues
  train     IPO (or a baseline) training from a pair file (see ipo_jax/train/config.py)
  eval      harmful share of reasoning and answer, refusal, over-refusal, math accuracy, report
  demo      the main job on the embedded default (see ipo_jax/demo.py)

Stages that take a config use ml_collections config files with dotted overrides:
  ipo-jax demo --config configs/demo.py --config.presets="('tiny-qwen3',)"
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

STAGES = ("convert", "presets", "sample", "build-pairs", "csr", "train", "eval", "demo")
CONFIG_STAGES = ("sample", "build-pairs", "csr", "train", "eval", "demo")


class ConfigError(ValueError):
    """A missing config file, an unknown key or a wrongly typed override (exit code 2)."""


def parse_config(argv: list[str], stage: str):
    """ml_collections config from `--config path.py` plus `--config.key=value` overrides.

    Unknown keys and wrongly typed values are errors (the config is locked): ConfigError,
    which `main` prints as one line and turns into exit code 2, like every other bad input.
    """
    from absl import flags
    from ml_collections import config_flags

    for i, arg in enumerate(argv):  # absl reports a missing file only on first use, obscurely
        path = arg.split("=", 1)[1] if arg.startswith("--config=") else (argv[i + 1] if arg == "--config" and i + 1 < len(argv) else None)
        if path is not None and not Path(path.split(":", 1)[0]).is_file():
            raise ConfigError(f"config file {path!r} not found")
    flag_values = flags.FlagValues()
    full_argv = [f"ipo-jax {stage}", *argv]
    # sys_argv: config_flags discovers the override flags from the argv it is given
    config_flags.DEFINE_config_file(
        "config", default=None, flag_values=flag_values, lock_config=True, sys_argv=full_argv
    )
    try:
        flag_values(full_argv)
    except (flags.Error, AttributeError, KeyError, TypeError, ValueError) as e:
        # ml_collections reports an unknown key as AttributeError/KeyError, a bad value as TypeError/ValueError
        raise ConfigError(f"bad config or override: {e}") from None
    if flag_values.config is None:
        raise ConfigError(f"--config is required (for example --config configs/{stage}.py)")
    return flag_values.config


def _mesh_arg(text: str | None):
    if not text:
        return None
    from ipo_jax.sharding import make_mesh

    shape = {}
    for part in text.split(","):
        name, _, size = part.partition("=")
        try:
            shape[name.strip()] = int(size)
        except ValueError:
            raise SystemExit(f"--mesh {text!r}: expected axis=size pairs such as 'fsdp=4,tensor=2'") from None
    return make_mesh(shape)


def cmd_convert(args) -> int:
    from ipo_jax.checkpoint import load_hf, load_orbax, save_hf, save_orbax

    mesh = _mesh_arg(args.mesh)
    overrides = {"param_dtype": args.param_dtype} if args.param_dtype else {}
    if args.src_format == "hf":
        model = load_hf(args.src, mesh=mesh, **overrides)
    else:
        model = load_orbax(args.src, mesh=mesh, **overrides)
    if args.dst_format == "hf":
        tokenizer = args.tokenizer or (args.src if args.src_format == "hf" and _has_tokenizer(args.src) else None)
        save_hf(
            model,
            args.dst,
            dtype=args.dtype,
            tokenizer_dir=tokenizer,
            max_shard_size=args.max_shard_size,
            overwrite=args.overwrite,
        )
    else:
        if args.tokenizer or args.dtype:
            raise SystemExit("--tokenizer and --dtype apply to HF output only; use --param-dtype for orbax")
        save_orbax(model, args.dst, overwrite=args.overwrite)
    cfg = model.cfg
    print(
        f"converted {args.src} ({args.src_format}) -> {args.dst} ({args.dst_format}): {cfg.model_type}, "
        f"{cfg.num_params() / 1e6:.1f}M parameters, {cfg.num_layers} layers"
    )
    return 0


def _has_tokenizer(path) -> bool:
    from ipo_jax.checkpoint.hf import TOKENIZER_EXPORT_FILES

    return any((Path(path) / name).is_file() for name in TOKENIZER_EXPORT_FILES)


def cmd_presets(args) -> int:
    from ipo_jax.models.presets import list_presets, preset_config

    print(f"{'preset':34s} {'type':6s} {'layers':>6s} {'hidden':>6s} {'heads':>9s} {'params':>9s} {'bf16 weights':>12s}")
    for name in list_presets():
        cfg = preset_config(name)
        n = cfg.num_params()
        print(
            f"{name:34s} {cfg.model_type:6s} {cfg.num_layers:6d} {cfg.hidden_size:6d} "
            f"{cfg.num_heads:4d}/{cfg.num_kv_heads:<4d} {n / 1e9:8.3f}B {2 * n / 2**30:9.2f} GiB"
        )
    return 0


def cmd_train(args, rest: list[str]) -> int:
    from ipo_jax.checkpoint.init import ModelSpecError
    from ipo_jax.train.loop import TrainingError, train

    try:
        return train(parse_config(rest, "train"))
    except (TrainingError, ModelSpecError) as e:
        print(f"ipo-jax train: error: {e}", file=sys.stderr)
        return 2


def cmd_demo(args, rest: list[str]) -> int:
    from ipo_jax.demo import run_demo

    return run_demo(parse_config(rest, "demo"))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ipo-jax", description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("-v", "--verbose", action="store_true", help="log at INFO level")
    sub = parser.add_subparsers(dest="stage", required=True, metavar="stage")

    conv = sub.add_parser(
        "convert",
        help="convert a model between HF safetensors and orbax",
        description="Examples:\n"
        "  ipo-jax convert --from hf --to orbax /models/R1-Distill-Qwen-1.5B ckpt/base\n"
        "  ipo-jax convert --from orbax --to hf ckpt/base export/ --tokenizer /models/R1-Distill-Qwen-1.5B",
        formatter_class=argparse.RawTextHelpFormatter,
    )
    conv.add_argument("--from", dest="src_format", choices=("hf", "orbax"), required=True)
    conv.add_argument("--to", dest="dst_format", choices=("hf", "orbax"), required=True)
    conv.add_argument("src", help="source directory")
    conv.add_argument("dst", help="output directory (must be empty or absent unless --overwrite)")
    conv.add_argument("--param-dtype", choices=("float32", "bfloat16", "float16"), help="dtype to load parameters in (default float32)")
    conv.add_argument("--dtype", choices=("float32", "bfloat16", "float16"), help="dtype of the written HF tensors (default: the parameter dtype)")
    conv.add_argument("--tokenizer", help="directory whose tokenizer files are copied into the HF output (default: the HF source, if it has them)")
    conv.add_argument("--max-shard-size", default="5GB", help="HF safetensors shard size limit (default 5GB)")
    conv.add_argument("--mesh", help="load sharded over a device mesh, e.g. 'fsdp=4,tensor=2' (default: one device)")
    conv.add_argument("--overwrite", action="store_true", help="replace a non-empty output directory")

    sub.add_parser("presets", help="list model presets with parameter counts")
    for stage, text in (("sample", "sample and judge one trajectory per prompt"),
                        ("build-pairs", "build preference pairs by corrective intervention"),
                        ("csr", "continuation safety ratio analysis of trajectories")):
        sub.add_parser(stage, help=f"{text} (--config configs/pipeline_tiny_cpu.py)", add_help=False)
    sub.add_parser(
        "train",
        help="train from a pair file (--config configs/train_tiny_cpu.py, --config.<field>=value overrides)",
        add_help=False,
    )
    sub.add_parser(
        "eval",
        help="evaluate a model on safety / over-refusal / math benchmarks (--config configs/eval.py)",
        add_help=False,
    )
    sub.add_parser(
        "demo",
        help="run the main job on the embedded default (--config configs/demo.py)",
        add_help=False,
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    args, rest = parser.parse_known_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    if args.stage not in CONFIG_STAGES and rest:
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    try:
        if args.stage == "convert":
            return cmd_convert(args)
        if args.stage == "presets":
            return cmd_presets(args)
        if args.stage == "train":
            return cmd_train(args, rest)
        if args.stage in ("sample", "build-pairs", "csr"):
            from ipo_jax.pipeline import run as stages

            run = {"sample": stages.run_sample, "build-pairs": stages.run_build_pairs, "csr": stages.run_csr}[args.stage]
            return run(parse_config(rest, args.stage))
        if args.stage == "eval":
            from ipo_jax.eval.harness import run_eval

            return run_eval(parse_config(rest, "eval"))
        return cmd_demo(args, rest)
    except (FileNotFoundError, FileExistsError, ValueError) as e:
        # Our errors already name the file / tensor / field; a traceback adds nothing for the user.
        print(f"ipo-jax {args.stage}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
