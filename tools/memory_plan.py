"""The memory table: what fits where, for the paper's model sizes at 8k / 16k / 32k tokens.

python tools/memory_plan.py --out tools/results/memory_plan

Every number comes from ipo_jax.train.plan (the planner behind `ipo-jax plan`): the real train
step compiled ahead of time from abstract arrays for simulated CPU devices, per-device memory
from XLA's memory_analysis(). The run is a paper config (--config, default
configs/train_r1_distill_llama_8b.py: float32 master weights and Adam moments, bfloat16 compute,
its remat and attention) with the model replaced by each preset (--models), the sequence by each
length (--seq-lens) and one prefix-shared row (one pair) per device per micro-batch, fsdp over
all devices; more devices then mean more pairs per micro-batch and fewer micro-batches for the
same pairs per update, which leaves the per-device memory as it is.

Per-device memory falls with the device count n as a + b / n: the train state, its gradients
and the optimizer update are split n ways (b), one row's activations are not (a). Per model the
step is compiled at --devices (default 8 and 32) at the first length and at the smaller count
for the other lengths; b comes from the first pair, a from each length's compile (every
quantity: arguments, outputs, aliased, temps). --check compiles one more (model, length,
count) and reports the fit's error.

A topology fits when its per-device peak leaves 10% of the memory free (plan.DEFAULT_HEADROOM):
XLA's CPU compiler makes its own fusion and buffer choices, some percent off a TPU's or GPU's.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

MODELS = ["deepseek-r1-distill-qwen-7b", "deepseek-r1-distill-llama-8b", "qwen3-8b", "qwen3-32b",
          "deepseek-r1-distill-llama-70b"]
TOPOLOGIES = ["v5p-8", "v5p-16", "v5p-32", "v5p-64", "v5p-128", "8xh100", "16xh100", "32xh100", "8xh200",
              "16xh200"]
FIELDS = ("arguments", "outputs", "aliased", "temps")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="configs/train_r1_distill_llama_8b.py", help="the run (memory fields)")
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                        help="config overrides, e.g. model.remat=dots_saveable model.attention=dense")
    parser.add_argument("--models", nargs="+", default=MODELS)
    parser.add_argument("--seq-lens", type=int, nargs="+", default=[8192, 16384, 32768])
    parser.add_argument("--devices", type=int, nargs=2, default=[8, 32], help="the two compiled device counts")
    parser.add_argument("--topologies", nargs="+", default=TOPOLOGIES)
    parser.add_argument("--check", nargs=3, metavar=("MODEL", "LENGTH", "DEVICES"),
                        help="compile one more point and report the a + b/n fit's error there")
    parser.add_argument("--out", help="write OUT.json and OUT.md")
    parser.add_argument("--compile-all", action="store_true",
                        help="compile every (model, length, device count) instead of fitting a + b/n")
    parser.add_argument("--from-json", metavar="JSON", help="rewrite --out's markdown from a saved JSON (no compiles)")
    return parser.parse_args(argv)


def load_config(path: str, overrides: list[str]):
    """The config file's get_config() with KEY=VALUE overrides (values parsed as Python literals)."""
    import ast
    import importlib.util

    from ipo_jax.train.plan import with_overrides

    spec = importlib.util.spec_from_file_location("_memory_plan_config", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    changes = {}
    for item in overrides:
        key, _, text = item.partition("=")
        try:
            changes[key] = ast.literal_eval(text)
        except (ValueError, SyntaxError):
            changes[key] = text
    return with_overrides(module.get_config(), changes)


def run_config(base, model: str, length: int, devices: int):
    """The base run on `model` at `length` tokens, one row per device per micro-batch."""
    from ipo_jax.train.plan import with_overrides

    pairs_per_update = base.data.pairs_per_micro * base.data.micro_batches
    return with_overrides(base, {
        "model.init": f"preset:{model}", "data.max_length": length, "data.buckets": (),
        "data.pairs_per_micro": devices, "data.micro_batches": max(1, pairs_per_update // devices),
        "mesh.data": 1, "mesh.fsdp": -1, "mesh.tensor": 1,
    })


def compile_point(base, model: str, length: int, devices: int) -> dict:
    from ipo_jax.train.plan import measure, parse_topology

    topology = parse_topology(f"{devices}xh100")  # any n-device topology: only the device count is used
    m = measure(run_config(base, model, length, devices), topology)
    row = dict(model=model, length=length, devices=devices, method="compiled", seconds=round(m.seconds, 1),
               **{k: getattr(m.memory, k) for k in FIELDS})
    _print(row)
    return row


def fitted(small: dict, large: dict, at_length: dict, devices: int) -> dict:
    """a + b/n per quantity: b from the two device counts at the first length, a from `at_length`
    (a compile at the smaller count and another length)."""
    n1, n2 = small["devices"], large["devices"]
    row = dict(at_length, devices=devices, method=f"fit a + b/n (b from {n1} and {n2} devices)", seconds=0.0)
    for k in FIELDS:
        b = (small[k] - large[k]) / (1 / n1 - 1 / n2)
        a = at_length[k] - b / n1
        row[k] = a + b / devices
    return row


def peak(row: dict) -> float:
    return row["arguments"] + row["outputs"] - row["aliased"] + row["temps"]


def _print(row: dict) -> None:
    from ipo_jax.train.plan import GIB

    print(f"{row['model']:30s} {row['length']:6d} tokens n={row['devices']:3d}: "
          + " ".join(f"{k} {row[k] / GIB:7.2f}" for k in FIELDS)
          + f" peak {peak(row) / GIB:7.2f} GiB ({row['method']}, {row['seconds']} s)", flush=True)


def main(argv=None) -> int:
    args = parse_args(argv)
    from ipo_jax.train import plan

    topologies = [plan.parse_topology(t) for t in args.topologies]
    if args.from_json:
        data = json.loads(Path(args.from_json).read_text())
        write_markdown(Path(args.out), data, topologies)
        return 0
    counts = sorted({t.devices for t in topologies} | set(args.devices))
    plan.request_cpu_devices(max(counts + ([int(args.check[2])] if args.check else [])))
    base = load_config(args.config, args.set)
    n1, n2 = sorted(args.devices)
    start = time.perf_counter()
    rows, per_device = [], {}
    for model in args.models:
        small = compile_point(base, model, args.seq_lens[0], n1)
        large = compile_point(base, model, args.seq_lens[0], n2)
        for length in args.seq_lens:
            at_length = small if length == args.seq_lens[0] else compile_point(base, model, length, n1)
            for n in counts:
                row = {n1: at_length, n2: large}.get(n) if length == args.seq_lens[0] else None
                if row is None and n != n1 and args.compile_all:
                    row = compile_point(base, model, length, n)
                row = row or (at_length if n == n1 else fitted(small, large, at_length, n))
                per_device[(model, length, n)] = row
                rows.append(row)
    check = None
    if args.check:
        model, length, n = args.check[0], int(args.check[1]), int(args.check[2])
        compiled = compile_point(base, model, length, n)
        predicted = per_device.get((model, length, n))
        if predicted is None or predicted["method"] == "compiled":
            raise SystemExit(f"--check {model} {length} {n}: not a fitted point of this table")
        check = dict(model=model, length=length, devices=n, compiled_peak=peak(compiled), fitted_peak=peak(predicted),
                     relative_error=peak(predicted) / peak(compiled) - 1)
        print(f"fit check: {check}")
    fits = {}
    for (model, length, n), row in per_device.items():
        for t in topologies:
            if t.devices == n:
                fits[(model, length, t.name)] = dict(peak=peak(row), headroom=plan.headroom_of(peak(row), t),
                                                     fits=plan.fits(peak(row), t))
    if args.out:
        write(Path(args.out), args, base, rows, fits, topologies, check, time.perf_counter() - start)
    return 0


def write(path: Path, args, base, rows, fits, topologies, check, seconds) -> None:
    from ipo_jax.train.plan import describe_run

    path.parent.mkdir(parents=True, exist_ok=True)
    when = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    machine = f"{os.cpu_count()}-core {platform.machine()} CPU (shared), simulated devices"
    command = " ".join(["python", "tools/memory_plan.py", *sys.argv[1:]])
    setup = describe_run(run_config(base, "MODEL", args.seq_lens[0], 8)).replace("preset:MODEL, ", "")
    data = dict(date=when, machine=machine, command=command, seconds=round(seconds), base_run=setup,
                note="one prefix-shared row per device per micro-batch, fsdp over all devices",
                rows=[dict(r, peak=peak(r)) for r in rows],
                fits=[dict(model=m, length=n, topology=t, **v) for (m, n, t), v in fits.items()], fit_check=check)
    path.with_suffix(".json").write_text(json.dumps(data, indent=1) + "\n")
    print(f"wrote {path.with_suffix('.json')}")
    write_markdown(path, data, topologies)


def write_markdown(path: Path, data: dict, topologies) -> None:
    """The tables of OUT.md from the JSON's rows, fits and fit check. A fitted verdict that a peak
    off by the fit check's error would flip is marked '?'."""
    from ipo_jax.train.plan import DEFAULT_HEADROOM, GIB

    rows, check = data["rows"], data["fit_check"]
    models = list(dict.fromkeys(r["model"] for r in rows))
    lengths = sorted({r["length"] for r in rows})
    counts = sorted({r["devices"] for r in rows})
    compiled = sorted({r["devices"] for r in rows if r["method"] == "compiled" and r["length"] == lengths[0]})
    error = abs(check["relative_error"]) if check else 0.0
    by_key = {(r["model"], r["length"], r["devices"]): r for r in rows}
    fits = {(f["model"], f["length"], f["topology"]): f for f in data["fits"]}
    lines = [f"Measured {data['date']} on {data['machine']} in {data['seconds'] / 60:.0f} min: `{data['command']}`", "",
             f"Run: {data['base_run']} (the sequence and the model as in each row; {data['note']}).", "",
             "Per-device peak (GiB) of the compiled IPO train step (" + (
                 f"compiled at {compiled} devices at {lengths[0]} tokens and at {compiled[0]} devices at the other "
                 "lengths; the others fitted as a + b/n):" if any(r["method"] != "compiled" for r in rows)
                 else "every cell compiled):"), "",
             "| model | tokens | " + " | ".join(f"{n} dev" for n in counts) + " |", "|---|---|" + "---|" * len(counts)]
    for model in models:
        for length in lengths:
            cells = []
            for n in counts:
                r = by_key[(model, length, n)]
                cells.append(f"{r['peak'] / GIB:.1f}" + ("" if r["method"] == "compiled" else "*"))
            lines.append(f"| {model} | {length} | " + " | ".join(cells) + " |")
    lines += ["", f"\\* fitted. Fit: peak and headroom; a run fits when >= {DEFAULT_HEADROOM:.0%} of the device's "
              "memory stays free" + (f"; '?' marks a fitted verdict that the fit check's error ({error:.1%}) could flip" if error else "")
              + ":", "",
              "| model | tokens | " + " | ".join(f"{t.name} ({t.devices} x {t.device_gib:.0f} GiB)" for t in topologies) + " |",
              "|---|---|" + "---|" * len(topologies)]
    for model in models:
        for length in lengths:
            cells = []
            for t in topologies:
                v = fits[(model, length, t.name)]
                fitted = by_key[(model, length, t.devices)]["method"] != "compiled"
                low, high = (1 - (1 + error) * (1 - v["headroom"]), 1 - (1 - error) * (1 - v["headroom"]))
                unsure = fitted and (low >= DEFAULT_HEADROOM) != (high >= DEFAULT_HEADROOM)
                cells.append(("fits" if v["fits"] else "no") + f" ({v['headroom']:.0%})" + ("?" if unsure else ""))
            lines.append(f"| {model} | {length} | " + " | ".join(cells) + " |")
    if check:
        lines += ["", f"Fit check: {check['model']} at {check['length']} tokens compiled at {check['devices']} devices: "
                  f"peak {check['compiled_peak'] / GIB:.2f} GiB, fitted {check['fitted_peak'] / GIB:.2f} GiB "
                  f"({check['relative_error']:+.2%})."]
    path.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print(f"wrote {path.with_suffix('.md')}")


if __name__ == "__main__":
    sys.exit(main())
