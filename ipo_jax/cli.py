"""`ipo-jax <stage>`: thin command-line wrappers over the packages.

Stages:
  convert   HF safetensors <-> orbax (and HF -> HF to re-shard or change dtype)
  presets   list the model presets with parameter counts and weight memory
  sample    sample and judge one trajectory per prompt
  build-pairs  intervention: sample -> judge -> first cue -> trigger -> continue -> pairs
  csr       continuation safety ratio per sentence, safety triggers and compliance cues
  train     IPO (or a baseline) training from a pair file (see ipo_jax/train/config.py)
  sft       supervised fine-tuning on a chat dataset, STAR-1 / RealSafe-R1 style (ipo_jax/sft/)
  grpo      GRPO, the RL baseline: the safety judge (or a rule) as reward (ipo_jax/grpo/)
  plan      will a training or GRPO config fit a topology? per-device memory of its compiled step, no weights
  eval      harmful share of reasoning and answer, refusal, over-refusal, math accuracy, report
  demo      the main job on the embedded default (see ipo_jax/demo.py)
  serve     our sampler as an OpenAI-compatible server (see ipo_jax/serve/__init__.py)
  launch    run a stage as N JAX processes on this machine (CPU, loopback; see ipo_jax/launch.py)

Several processes (a TPU slice, SLURM `srun`, or JAX_COORDINATOR_ADDRESS + JAX_NUM_PROCESSES +
JAX_PROCESS_ID) join one run before a stage starts (ipo_jax/distributed.py).

Stages that take a config use ml_collections config files with dotted overrides:
  ipo-jax demo --config configs/demo.py --config.presets="('tiny-qwen3',)"
`ipo-jax STAGE --help` lists the stage's settings with their defaults and meaning.

Errors: bad input (a config, a setting out of range, a record file, a path that is missing, of
the wrong kind or not writable, a full disk) is one line on stderr and exit code 2; anything
else is one line and exit code 1 (-v shows the traceback). A judge or cue detector that cannot
do the work (sample, build-pairs, csr, eval: its probe request fails, its context is too short
for the stage's requests, the first batch fails entirely, or more than judge.max_error_share of a
chunk's requests fail) is one line naming the endpoint, model, HTTP status and the server's
message, and exit code 5 (ipo_jax/judging/guard.py). A closed output pipe
(`ipo-jax presets | head -1`) ends the command quietly with exit code 0.
"""

from __future__ import annotations

import argparse
import atexit
import errno
import logging
import os
import sys
from pathlib import Path

from ipo_jax.log import cli_logging

CONFIGS_DIR = Path(__file__).resolve().parents[1] / "configs"
# The config stages: their help line and the config files shipped for them (under configs/).
CONFIG_STAGES = {
    "sample": ("sample and judge one trajectory per prompt", "pipeline_*.py"),
    "build-pairs": ("build preference pairs by corrective intervention", "pipeline_*.py"),
    "csr": ("continuation safety ratio analysis of trajectories", "pipeline_*.py"),
    "train": ("train from a pair file", "train_*.py"),
    "sft": ("supervised fine-tuning on a chat dataset (STAR-1 / RealSafe-R1 style safety reasoning)", "sft_*.py"),
    "grpo": ("GRPO with the safety judge (or a rule) as reward: the paper's RL baseline", "grpo_*.py"),
    "eval": ("evaluate a model on safety / over-refusal / math benchmarks", "eval*.py"),
    "demo": ("run the main job on the embedded default", "demo.py"),
}
# Where each config stage's code lives: (its settings module: base_config, field_help and the
# settings rules it registers; "module:function" that runs it). Imported only when the stage runs,
# so `ipo-jax --help` answers without jax.
STAGE_CODE = {
    "sample": ("ipo_jax.pipeline.config", "ipo_jax.pipeline.run:run_sample"),
    "build-pairs": ("ipo_jax.pipeline.config", "ipo_jax.pipeline.run:run_build_pairs"),
    "csr": ("ipo_jax.pipeline.config", "ipo_jax.pipeline.run:run_csr"),
    "train": ("ipo_jax.train.config", "ipo_jax.train.loop:train"),
    "sft": ("ipo_jax.sft.config", "ipo_jax.sft.run:run_sft"),
    "grpo": ("ipo_jax.grpo.config", "ipo_jax.grpo.run:run_grpo"),
    "eval": ("ipo_jax.eval.config", "ipo_jax.eval.harness:run_eval"),
    "demo": ("ipo_jax.validation", "ipo_jax.demo:run_demo"),  # the demo's config is its config file
}
STAGES = ("convert", "presets", "plan", "serve", "launch", *CONFIG_STAGES)
EXIT_BAD_INPUT = 2
EXIT_UNEXPECTED = 1
EXIT_JUDGE_FAILED = 5  # the judge / cue detector failed (ipo_jax/judging/guard.py); 3 and 4 are training's
_WRITE_ERRNOS = {errno.EROFS, errno.ENOSPC, errno.EDQUOT, errno.EFBIG}


class ConfigError(ValueError):
    """A missing config file, an unknown key or a wrongly typed override (exit code 2)."""


class _ArgumentParser(argparse.ArgumentParser):
    """argparse, with usage errors as the same one line as every other bad input."""

    def error(self, message):
        raise ConfigError(f"{message} (see `{self.prog} --help`)")


def _shown(path: Path) -> str:
    """`path` relative to the working directory when it is below it (as a user would type it)."""
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def example_configs(stage: str) -> list[str]:
    """The shipped config files of a stage, as paths that exist from here."""
    pattern = CONFIG_STAGES[stage][1]
    found = sorted(CONFIGS_DIR.glob(pattern), key=lambda p: ("tiny" not in p.name, p.name))
    return [_shown(p) for p in found]


def parse_config(argv: list[str], stage: str):
    """ml_collections config from `--config path.py` plus `--config.key=value` overrides.

    Unknown keys and wrongly typed values are errors (the config is locked): ConfigError,
    which `main` prints as one line and turns into exit code 2, like every other bad input.
    """
    from absl import flags
    from ml_collections import config_flags

    for i, arg in enumerate(argv):  # absl reports a missing file only on first use, obscurely
        path = arg.split("=", 1)[1] if arg.startswith("--config=") else (argv[i + 1] if arg == "--config" and i + 1 < len(argv) else None)
        if path is not None:
            file = Path(path.split(":", 1)[0])
            if file.is_dir():
                raise ConfigError(f"config file {path!r} is a directory; expected a Python config file")
            if not file.is_file():
                raise ConfigError(f"config file {path!r} not found" + _config_hint(stage))
    flag_values = flags.FlagValues()
    full_argv = [f"ipo-jax {stage}", *argv]
    # sys_argv: config_flags discovers the override flags from the argv it is given
    config_flags.DEFINE_config_file(
        "config", default=None, flag_values=flag_values, lock_config=True, sys_argv=full_argv
    )
    try:
        flag_values(full_argv)
    except (flags.Error, AttributeError, KeyError, TypeError, ValueError, SyntaxError, ImportError) as e:
        # ml_collections reports an unknown key as AttributeError/KeyError, a bad value as TypeError/ValueError
        raise ConfigError(f"bad config or override: {' '.join(str(e).split())}") from None
    if flag_values.config is None:
        raise ConfigError("--config is required" + _config_hint(stage))
    return flag_values.config


def _config_hint(stage: str) -> str:
    files = example_configs(stage) if stage in CONFIG_STAGES else []
    return f" (for example --config {files[0]})" if files else ""


# ----------------------------------------------------------------------------- --help for config stages


def _stage_module(stage: str, part: str):
    """The module of a config stage's settings ("config") or of its run function ("run")."""
    import importlib

    return importlib.import_module(STAGE_CODE[stage][0 if part == "config" else 1].split(":")[0])


def _base_config(stage: str):
    if stage == "demo":
        return _load_config_file(CONFIGS_DIR / "demo.py")
    return _stage_module(stage, "config").base_config()


def _load_config_file(path: Path):
    import importlib.util

    spec = importlib.util.spec_from_file_location(f"_ipo_jax_config_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config()


def _field_help(stage: str) -> dict[str, str]:
    """The stage's field help from its settings dataclasses (ipo_jax/settings.py): the one source of
    each field's help. The demo's config file is not built from dataclasses: its comments are its help."""
    if stage == "demo":
        return field_comments([CONFIGS_DIR / "demo.py"])
    field_help = _stage_module(stage, "config").field_help
    return {**dataclass_field_comments(), **field_help()}


def field_comments(sources: list[Path]) -> dict[str, str]:
    """{'data.max_length': 'its comment'} from assignments `c.data.max_length = ...  # comment` (or a
    comment line right above them) in config files: the help of a field its dataclass leaves without
    one. The first file (and within it the first assignment) that describes a field wins."""
    import io
    import tokenize

    comments: dict[str, str] = {}
    for source in sources:
        if not source.is_file():
            continue
        above: list[str] = []
        line_tokens: list[tokenize.TokenInfo] = []
        for token in tokenize.generate_tokens(io.StringIO(source.read_text()).readline):
            if token.type == tokenize.COMMENT and not line_tokens:
                above.append(token.string.lstrip("#").strip())
                continue
            if token.type in (tokenize.NEWLINE, tokenize.NL):
                if line_tokens:
                    _record_comment(line_tokens, above, comments)
                    above = []
                line_tokens = []
                continue
            if token.type not in (tokenize.INDENT, tokenize.DEDENT):
                line_tokens.append(token)
    return comments


# Config sections built from the dataclass that consumes them (ipo_jax/train/config.py): their
# fields' help is the comment on each dataclass field (the other sections' is in their settings metadata).
DATACLASS_SECTIONS = {"loss": ("loss/preference.py", "LossConfig"), "optim": ("train/step.py", "OptimConfig")}


def dataclass_field_comments() -> dict[str, str]:
    """{'loss.alpha': 'its comment'} from `alpha: float = 0.2  # comment` in the dataclasses above."""
    import ast

    package = Path(__file__).resolve().parent
    comments: dict[str, str] = {}
    for section, (module, class_name) in DATACLASS_SECTIONS.items():
        source = (package / module).read_text()
        lines = source.splitlines()
        for node in ast.parse(source).body:
            if isinstance(node, ast.ClassDef) and node.name == class_name:
                for field in node.body:
                    line = lines[field.lineno - 1] if isinstance(field, ast.AnnAssign) else ""
                    if "#" in line and isinstance(field.target, ast.Name):
                        comments[f"{section}.{field.target.id}"] = line.split("#", 1)[1].strip()
    return comments


def _describe(name: str, comments: dict[str, str]) -> str:
    """A field's help; else the one field of that name elsewhere (a section copied under another name)."""
    if name in comments:
        return comments[name]
    leaf = name.rsplit(".", 1)[-1]
    same_leaf = [text for key, text in comments.items() if key.rsplit(".", 1)[-1] == leaf]
    return same_leaf[0] if len(same_leaf) == 1 else ""


def _record_comment(tokens, above: list[str], comments: dict[str, str]) -> None:
    import tokenize

    words = [t.string for t in tokens]
    if len(words) < 4 or not words[0].isidentifier() or words[1] != ".":
        return
    try:
        end = words.index("=")
    except ValueError:
        return
    name = "".join(words[2:end])
    trailing = [t.string.lstrip("#").strip() for t in tokens if t.type == tokenize.COMMENT]
    text = trailing[0] if trailing else (above[0] if above else "")
    if text and name not in comments:
        comments[name] = text


def _flatten(config, prefix: str = ""):
    for key, value in config.items():
        name = f"{prefix}{key}"
        if hasattr(value, "items"):
            yield from _flatten(value, name + ".")
        else:
            yield name, value


def _kind(value) -> str:
    """What a field without a comment or a rule holds, from its default."""
    if isinstance(value, bool):
        return "true or false"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a number"
    if isinstance(value, (tuple, list)):
        return "a tuple"
    return "a string" if isinstance(value, str) else type(value).__name__


def stage_help(stage: str, argv: list[str]) -> str:
    """The stage's usage, config files, and every field: default, meaning, accepted values."""
    from ipo_jax.validation import stage_rules

    config_file = next((a.split("=", 1)[1] if a.startswith("--config=") else argv[i + 1]
                        for i, a in enumerate(argv) if a.startswith("--config=") or (a == "--config" and i + 1 < len(argv))), None)
    config = _load_config_file(Path(config_file)) if config_file and Path(config_file).is_file() else _base_config(stage)
    # the dataclasses' help first; a config file's comments describe what they leave without help
    comments = {**field_comments([Path(config_file)] if config_file else []), **_field_help(stage)}
    rules = stage_rules(stage)
    fields = list(_flatten(config))
    width = min(48, max(len(f"{name} = {value!r}") for name, value in fields))
    lines = [
        f"usage: ipo-jax {stage} --config FILE [--config.FIELD=VALUE ...] [-v]",
        "",
        f"{CONFIG_STAGES[stage][0]}.",
        f"config files: {', '.join(example_configs(stage)) or '(none shipped)'}",
        f"fields (defaults {'of ' + config_file if config_file else 'before a config file changes them'}):",
    ]
    for name, value in fields:
        description = _describe(name, comments)
        check = rules.get(name)
        accepted = check(object()) if check else None  # a rule names what it accepts when given nothing valid
        if accepted and accepted not in description:
            description = f"{description}{'; ' if description else ''}{accepted}"
        lines.append(f"  {f'{name} = {value!r}':<{width}}  {description or _kind(value)}")
    return "\n".join(lines)


# ----------------------------------------------------------------------------- stages


def _mesh_arg(text: str | None):
    if not text:
        return None
    from ipo_jax.sharding import make_mesh

    shape = {}
    for part in text.split(","):
        name, sep, size = part.partition("=")
        try:
            if not sep:
                raise ValueError
            shape[name.strip()] = int(size)
        except ValueError:
            raise ConfigError(f"--mesh {text!r}: expected axis=size pairs such as 'fsdp=4,tensor=2'") from None
    return make_mesh(shape)


def cmd_convert(args) -> int:
    from ipo_jax.checkpoint import load_hf, load_orbax, save_hf, save_orbax
    from ipo_jax.checkpoint.manifest import read_manifest

    src = Path(args.src)
    if not src.exists():
        raise FileNotFoundError(f"source {src} does not exist")
    if not src.is_dir():
        raise NotADirectoryError(f"source {src} is a file; expected a model directory")
    if args.verify is not None:
        if args.src_format != "hf":
            raise ConfigError("--verify checks HF safetensors files; it applies to --from hf only")
        read_manifest(args.verify)  # a missing or malformed manifest is found before the model is read
    if args.dst_format == "orbax" and (args.tokenizer or args.dtype):
        raise ConfigError("--tokenizer and --dtype apply to HF output only; use --param-dtype for orbax")
    dst = _convert_output(Path(args.dst), args.overwrite)
    mesh = _mesh_arg(args.mesh)
    if mesh is None:
        import jax

        if jax.process_count() > 1:  # one device is one process's: span every process's devices instead
            mesh = _mesh_arg("fsdp=-1")
    overrides = {"param_dtype": args.param_dtype} if args.param_dtype else {}
    if args.src_format == "hf":
        model = load_hf(args.src, mesh=mesh, verify=args.verify, **overrides)
    else:
        model = load_orbax(args.src, mesh=mesh, **overrides)
    if args.dst_format == "hf":
        tokenizer = args.tokenizer or (args.src if args.src_format == "hf" and _has_tokenizer(args.src) else None)
        save_hf(
            model,
            dst,
            dtype=args.dtype,
            tokenizer_dir=tokenizer,
            max_shard_size=args.max_shard_size,
            overwrite=args.overwrite,
        )
    else:
        save_orbax(model, dst, overwrite=args.overwrite)
    cfg = model.cfg
    print(
        f"converted {args.src} ({args.src_format}) -> {args.dst} ({args.dst_format}): {cfg.model_type}, "
        f"{cfg.num_params() / 1e6:.1f}M parameters, {cfg.num_layers} layers"
    )
    return 0


def _convert_output(dst: Path, overwrite: bool) -> Path:
    """The directory `convert` writes, checked before the model is read (a minutes-long load should
    not end in a refusal): symbolic links resolved (so the rename into place replaces the real
    directory, not the link), no loop, not a file, writable, empty unless `overwrite`."""
    from ipo_jax.validation import output_dir

    try:
        real = dst.resolve()
    except (RuntimeError, OSError):  # RuntimeError: Python < 3.13 reports a symlink loop so
        raise ConfigError(f"output {dst}: a symbolic link loop; expected a directory path") from None
    if real.exists() and not real.is_dir():
        raise FileExistsError(f"output {dst} is a file; expected a directory to write")
    problem = output_dir(str(real))  # a read-only target fails in seconds
    if problem:
        raise ConfigError(f"output {dst}: expected {problem}")
    if not overwrite and real.is_dir() and any(real.iterdir()):
        raise FileExistsError(f"{dst} exists and is not empty; pass --overwrite to replace it")
    return real


def _has_tokenizer(path) -> bool:
    from ipo_jax.checkpoint.hf import TOKENIZER_EXPORT_FILES

    return any((Path(path) / name).is_file() for name in TOKENIZER_EXPORT_FILES)


def cmd_plan(args, rest: list[str]) -> int:
    from ipo_jax.train.plan import PlanError, run_plan

    layers = None
    if args.layers:
        try:
            layers = tuple(int(x) for x in args.layers.split(","))
        except ValueError:
            layers = ()
        if len(layers) != 2:
            raise PlanError(f"--layers {args.layers!r}: expected two layer counts A,B such as 2,4")
    config = parse_config(rest, "train")
    return run_plan(config, args.topology, headroom=args.headroom, layers=layers, suggest=not args.no_suggest,
                    device_memory_gib=args.device_memory)


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


def _run_config_stage(stage: str, config) -> int:
    run = getattr(_stage_module(stage, "run"), STAGE_CODE[stage][1].split(":")[1])
    return run(config)


def _output_path(config) -> str | None:
    """Where a config stage writes (named in a write error that does not name its file)."""
    for dotted in ("train.out", "out"):
        node = config
        for key in dotted.split("."):
            node = node.get(key) if hasattr(node, "get") else None
        if isinstance(node, str) and node:
            return node
    return None


def build_parser() -> argparse.ArgumentParser:
    parser = _ArgumentParser(prog="ipo-jax", description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("-v", "--verbose", action="store_true", help="log everything at DEBUG, third-party libraries too; show tracebacks")
    sub = parser.add_subparsers(dest="stage", required=True, metavar="stage", parser_class=_ArgumentParser)

    conv = sub.add_parser(
        "convert",
        help="convert a model between HF safetensors and orbax",
        description="Examples:\n"
        "  ipo-jax convert --from hf --to orbax /models/R1-Distill-Qwen-1.5B ckpt/base\n"
        "  ipo-jax convert --from orbax --to hf ckpt/base export/ --tokenizer /models/R1-Distill-Qwen-1.5B\n"
        "HF output carries SHA256SUMS, a manifest of its files: check it with `cd export && sha256sum -c SHA256SUMS`;\n"
        "an import checks it (and the HF cache's digests) itself.",
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
    conv.add_argument("--mesh", help="load sharded over a device mesh, e.g. 'fsdp=4,tensor=2' (default: one device; "
                      "in several processes fsdp over all their devices)")
    conv.add_argument("--overwrite", action="store_true", help="replace a non-empty output directory")
    conv.add_argument("--verify", metavar="FILE", help="SHA-256 manifest (sha256sum format, as `convert --to hf` writes\n"
                      "in SHA256SUMS) the HF source's safetensors files must match (exit 2 if not).\n"
                      "Also checked without it: the source's own SHA256SUMS and, for an HF cache\n"
                      "snapshot or a hub --local-dir download, the SHA-256 the hub recorded")

    sub.add_parser("presets", help="list model presets with parameter counts")
    plan = sub.add_parser(
        "plan",
        help="will a training or GRPO config fit a topology? (--config configs/train_*.py --topology v5p-8)",
        description="Compile the config's train step ahead of time (no weights) and print its per-device memory.\n"
        "Exit 0: fits; 3: does not fit (the smallest change that would is printed); 2: bad input.\n"
        "The run: --config FILE with --config.<field>=value overrides, as for `ipo-jax train`.\n"
        "  ipo-jax plan --config configs/train_qwen3_8b.py --topology 8xh100 [--config.data.max_length=16384]",
        formatter_class=argparse.RawTextHelpFormatter,
    )
    plan.add_argument("--topology", required=True, help="v5p-8 ... v5p-256 (N/8 hosts of 4 chips), 8xh100, 8xh200, Nxa100-80 (Nxh100, Nxh200;\n"
                      "N > 8: N/8 nodes of 8 GPUs); multi-host topologies also print the per-host view")
    plan.add_argument("--headroom", type=float, default=0.10, help="share of device memory kept free (default 0.10)")
    plan.add_argument("--device-memory", type=float, metavar="GIB", help="memory per device in GiB (default: the topology's)")
    plan.add_argument("--layers", metavar="A,B", help="compile A and B layers and extrapolate (default: full depth)")
    plan.add_argument("--no-suggest", action="store_true", help="when it does not fit, do not search for a change that fits")
    serve = sub.add_parser(
        "serve",
        help="serve a model as an OpenAI-compatible server: /v1/completions, /v1/chat/completions (policy / judge backend http)",
        description="Our sampler behind POST /v1/completions (token-id or text prompts), POST /v1/chat/completions\n"
        "(the tokenizer's chat template; a reasoning model's <think> part as reasoning_content), GET /v1/models\n"
        "and GET /health, on loopback by default. Streaming (stream: true, server-sent events), logprobs, n,\n"
        "seed and stop on both; requests are batched continuously (a new one joins at the next chunk).\n"
        "The pipeline uses it with --config.policy.backend=http --config.policy.base_url=http://127.0.0.1:PORT/v1\n"
        "--config.policy.model=NAME (and the judge with --config.judge.backend=http ...).\n"
        "Request fields, seeds, limits and errors: ipo_jax/serve/__init__.py.\n"
        "  ipo-jax serve --model hf:/models/R1-Distill-Qwen-1.5B --port 8000 --served-model-name policy --api-key KEY\n"
        "  ipo-jax serve --model preset:tiny-qwen3 --tokenizer runs/train_tiny/tokenizer --port 0",
        formatter_class=argparse.RawTextHelpFormatter,
    )
    serve.add_argument("--model", required=True, help="hf:DIR, orbax:DIR (e.g. a run's final/) or preset:NAME")
    serve.add_argument("--tokenizer", help="tokenizer directory (default: the hf: model directory)")
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1, loopback only)")
    serve.add_argument("--port", type=int, default=8000, help="port (default 8000; 0 = any free port, printed)")
    serve.add_argument("--served-model-name", nargs="+", metavar="NAME",
                       help="the model id(s) clients send; the first is the one responses name (default: the --model spec)")
    serve.add_argument("--api-key", help="require 'Authorization: Bearer KEY' on every route but /health\n"
                       "(default: $IPO_JAX_API_KEY, else $VLLM_API_KEY; none set: no key needed)")
    serve.add_argument("--max-model-len", type=int, help="context enforced: prompt + max_tokens (default: the model's)")
    serve.add_argument("--reasoning-parser", choices=("auto", "deepseek_r1", "qwen3", "none"), default="auto",
                       help="chat replies: the <think> part as reasoning_content (deepseek_r1, qwen3), or inline\n"
                       "(none); auto (default): deepseek_r1 / qwen3 when the tokenizer has <think> tokens")
    serve.add_argument("--batch-size", type=int, default=8, help="sampler rows per device call (default 8)")
    serve.add_argument("--max-prompt-length", type=int, default=4096, help="longest prompt in tokens (default 4096)")
    serve.add_argument("--chunk-tokens", type=int, default=32,
                       help="decode steps per device call while every batch row is busy (default 32)")
    serve.add_argument("--admit-tokens", type=int, default=4,
                       help="decode steps per device call while the batch has free rows, so a new request\n"
                       "starts within this many steps (default 4; at most --chunk-tokens, which turns it off)")
    serve.add_argument("--mesh", help="shard over a device mesh of every device, e.g. 'data=-1,tensor=2' (default: one device)")
    serve.add_argument("--param-dtype", choices=("float32", "bfloat16", "float16"), default="float32",
                       help="dtype of the weights (default float32)")
    serve.add_argument("--dtype", choices=("float32", "bfloat16", "float16"), default="float32",
                       help="compute dtype (default float32)")
    serve.add_argument("--max-request-bytes", type=int, default=4 << 20,
                       help="largest request body; more is a 413 (default 4194304)")
    serve.add_argument("--read-timeout", type=float, default=30.0,
                       help="seconds a client may take to send a request's headers, and per body read (default 30)")
    serve.add_argument("--timeout-keep-alive", type=int, default=5, help="idle keep-alive seconds (default 5)")
    serve.add_argument("--max-connections", type=int, default=256,
                       help="open connections at most; more get a 503 (default 256)")
    launch = sub.add_parser(
        "launch",
        help="run a stage as N JAX processes on this machine (CPU, loopback): ipo-jax launch --processes 2 -- train ...",
        description="Start N processes of `ipo-jax STAGE ARGS...` joined as one multi-process JAX run on loopback\n"
        "(CPU devices, gloo collectives), as a SLURM job or a TPU slice would start them. Output lines are\n"
        "prefixed with the process index; SIGINT / SIGTERM go to every process; when one fails the others are\n"
        "stopped and its exit code is returned.\n"
        "  ipo-jax launch --processes 2 --devices-per-process 4 -- train --config configs/train_tiny_cpu.py",
        formatter_class=argparse.RawTextHelpFormatter,
    )
    launch.add_argument("--processes", type=int, required=True, help="number of JAX processes")
    launch.add_argument("--devices-per-process", type=int, help="simulated CPU devices in each process (default: XLA_FLAGS, else 1)")
    launch.add_argument("--port", type=int, help="coordinator port on 127.0.0.1 (default: a free one)")
    launch.add_argument("command", nargs=argparse.REMAINDER, help="-- STAGE ARGS...: the stage and its arguments")
    for stage, (text, _) in CONFIG_STAGES.items():
        hint = _config_hint(stage).strip(" ()").replace("for example ", "")
        sub.add_parser(stage, help=f"{text} ({hint}; `ipo-jax {stage} --help` lists the fields)", add_help=False)
    return parser


def _dispatch(args, rest: list[str], parser) -> int:
    if args.stage == "launch":
        from ipo_jax.launch import launch

        command = args.command[1:] if args.command[:1] == ["--"] else args.command
        return launch(args.processes, args.devices_per_process, command + rest, port=args.port)
    if args.stage not in ("presets", "plan") and not any(a in ("-h", "--help") for a in rest):
        from ipo_jax.distributed import initialize_from_environment

        initialize_from_environment()  # before the stage touches a device; a no-op in one process
    if args.stage in CONFIG_STAGES:
        if "--help" in rest or "-h" in rest:
            print(stage_help(args.stage, [a for a in rest if a not in ("--help", "-h")]))
            return 0
        from ipo_jax.validation import validate_settings

        config = parse_config(rest, args.stage)
        args.output = _output_path(config)
        _stage_module(args.stage, "config")  # registers the stage's settings rules, whatever the config file imported
        validate_settings(args.stage, config)  # before any work and before anything is written
        return _run_config_stage(args.stage, config)
    if args.stage == "plan":
        return cmd_plan(args, rest)
    if rest:
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    if args.stage == "convert":
        args.output = args.dst
        return cmd_convert(args)
    if args.stage == "serve":
        from ipo_jax.serve import run_serve

        return run_serve(args)
    return cmd_presets(args)


def _os_error_line(e: OSError, output: str | None) -> str:
    """One line naming the path: 'cannot write <path>: No space left on device'."""
    path = e.filename or output
    reason = e.strerror or str(e)
    if e.errno in _WRITE_ERRNOS:
        return f"cannot write {path}: {reason}" if path else f"cannot write: {reason}"
    if e.errno in (errno.EACCES, errno.EPERM):
        return f"cannot access {path}: {reason}" if path else f"permission denied: {reason}"
    if e.filename is not None:
        return f"{e.filename}: {reason}"
    return str(e) if e.errno is None else f"{output + ': ' if output else ''}{reason}"


def main(argv: list[str] | None = None) -> int:
    own_process = argv is None  # the process's command (not a call from Python): it exits after this
    argv = list(sys.argv[1:] if argv is None else argv)
    verbose = "-v" in argv[:1] or "--verbose" in argv[:1]
    stage = next((a for a in argv if a in STAGES), None)
    prefix = f"ipo-jax {stage}" if stage else "ipo-jax"
    args = argparse.Namespace(output=None)
    try:
        parser = build_parser()
        args, rest = parser.parse_known_args(argv)
        args.output = None
        verbose = args.verbose
        if own_process and not verbose:
            atexit.register(_quiet_asyncio_at_exit)
        with cli_logging(verbose):  # ipo_jax's report at INFO, third parties quiet (ipo_jax/log.py)
            return _dispatch(args, rest, parser)
    except SystemExit as e:  # argparse's own --help / usage exits
        return e.code if isinstance(e.code, int) else EXIT_BAD_INPUT
    except BrokenPipeError:
        # the reader went away (`| head`): not an error; later writes to stdout go nowhere
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 0
    except KeyboardInterrupt:
        print(f"{prefix}: interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # noqa: BLE001 -- every error ends as one line; -v shows the traceback
        distributed = sys.modules.get("ipo_jax.distributed")
        if distributed is not None:  # other processes of a multi-process run stop instead of waiting for this one
            distributed.report_failure(e)
        if verbose:
            raise
        message, code = error_line(e, getattr(args, "output", None))
        print(f"{prefix}: error: {message}", file=sys.stderr)
        return code


def _quiet_asyncio_at_exit() -> None:
    """orbax's write tasks that failed with a save (a full disk, reported in one line) are collected as
    the interpreter exits, and asyncio would print each with its traceback ("Task exception was
    never retrieved"). Unless -v, they stay quiet: the command's error line already said it."""
    logging.getLogger("asyncio").disabled = True


def _is_bad_input(e: Exception) -> bool:
    training = sys.modules.get("ipo_jax.train.loop")
    return isinstance(e, (ValueError, OSError)) or (training is not None and isinstance(e, training.TrainingError))


def error_line(e: Exception, output: str | None = None) -> tuple[str, int]:
    """(one-line message, exit code) for an error that ends a command."""
    records = sys.modules.get("ipo_jax.judging.records")
    if records is not None and isinstance(e, records.JudgeFailedError):
        return " ".join(str(e).split()), EXIT_JUDGE_FAILED
    distributed = sys.modules.get("ipo_jax.distributed")
    if distributed is not None and isinstance(e, distributed.PeerProcessError):  # the other process said why
        return " ".join(str(e).split()), EXIT_UNEXPECTED
    if isinstance(e, OSError) and e.errno is not None:  # raised by the OS: name the path and the reason
        return _os_error_line(e, output), EXIT_BAD_INPUT
    if _is_bad_input(e):
        # our errors already name the file / line / field; a traceback adds nothing for the user.
        # Multi-line messages (lists of fields) are joined so the error stays one line.
        return "; ".join(line.strip() for line in str(e).splitlines() if line.strip()), EXIT_BAD_INPUT
    text = " ".join(str(e).split())
    return f"{type(e).__name__}: {text} (unexpected; run with -v for the traceback)", EXIT_UNEXPECTED

if __name__ == "__main__":
    sys.exit(main())
