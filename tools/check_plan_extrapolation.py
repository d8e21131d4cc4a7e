"""How far is `ipo-jax plan --layers A,B` (compile A and B layers, extrapolate linearly) from a
full-depth compile? And how long does each take?

python tools/check_plan_extrapolation.py --config configs/train_r1_distill_llama_8b.py --topology 8xh100 \
    --layers 2,4 4,8 --out tools/results/plan_extrapolation

For each --layers pair the step is planned by extrapolation, then once at full depth; the table
gives each quantity (arguments, outputs, aliased, temps, peak; GiB per device) and the relative
error of the extrapolated peak, with the wall and CPU seconds of each way.
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="configs/train_r1_distill_llama_8b.py")
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="config overrides")
    parser.add_argument("--topology", default="8xh100")
    parser.add_argument("--layers", nargs="+", default=["2,4"], help="A,B pairs to extrapolate from")
    parser.add_argument("--out", help="write OUT.json and OUT.md")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    from ipo_jax.train import plan
    from memory_plan import load_config

    topology = plan.parse_topology(args.topology)
    if plan.simulated(topology):
        plan.request_cpu_devices(topology.devices)
    config = load_config(args.config, args.set)
    results = []
    for text in [*args.layers, "full"]:
        layers = None if text == "full" else tuple(int(x) for x in text.split(","))
        wall, cpu = time.perf_counter(), time.process_time()
        m = plan.measure(config, topology, layers)
        row = dict(layers=text, method=m.method, wall_seconds=round(time.perf_counter() - wall, 1),
                   cpu_seconds=round(time.process_time() - cpu, 1), **m.memory.as_dict())
        results.append(row)
        print(f"{text:>5s}: " + " ".join(f"{k} {row[k] / plan.GIB:.2f}" for k in ("arguments", "outputs", "aliased", "temps", "peak"))
              + f" GiB ({m.method}; {row['wall_seconds']} s wall, {row['cpu_seconds']} s CPU)", flush=True)
    full = results[-1]
    for row in results:
        row["peak_relative_error"] = row["peak"] / full["peak"] - 1
    if args.out:
        write(Path(args.out), args, plan.describe_run(config), plan.topology_note(topology), results)
    return 0


def write(path: Path, args, run: str, topology: str, results: list[dict]) -> None:
    gib = 1024**3
    when = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    command = " ".join(["python", "tools/check_plan_extrapolation.py", *sys.argv[1:]])
    path.parent.mkdir(parents=True, exist_ok=True)
    path.with_suffix(".json").write_text(json.dumps(dict(date=when, machine=platform.machine(), command=command,
                                                         run=run, topology=topology, results=results), indent=1) + "\n")
    lines = [f"Measured {when} ({platform.machine()} CPU, shared): `{command}`", "", f"Run: {run}.", f"Topology: {topology}.",
             "", "| layers compiled | arguments | outputs | aliased | temps | peak (GiB/device) | peak error | wall s | CPU s |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        lines.append(f"| {r['layers']} | " + " | ".join(f"{r[k] / gib:.2f}" for k in ("arguments", "outputs", "aliased", "temps", "peak"))
                     + f" | {r['peak_relative_error']:+.2%} | {r['wall_seconds']} | {r['cpu_seconds']} |")
    path.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print(f"wrote {path.with_suffix('.json')} and {path.with_suffix('.md')}")


if __name__ == "__main__":
    sys.exit(main())
