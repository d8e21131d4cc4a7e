"""tools/memory_plan.py: the memory table built on ipo_jax.train.plan. The a + b/n fit over
device counts is exact on its own model, and on a tiny preset it predicts a compile it did not
see; the table's files carry the fits per topology."""

import importlib.util
import json
from pathlib import Path

import jax
import pytest

_spec = importlib.util.spec_from_file_location("memory_plan", Path(__file__).parents[1] / "tools" / "memory_plan.py")
memory_plan = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(memory_plan)

FIT_TOLERANCE = 0.05  # relative error of a fitted peak against its compile (tiny preset)


def test_fit_is_exact_for_a_plus_b_over_n():
    a = dict(arguments=1.0, outputs=2.0, aliased=0.5, temps=10.0)
    b = dict(arguments=64.0, outputs=64.0, aliased=64.0, temps=32.0)

    def row(n, length=64, scale=1.0):
        return dict(model="m", length=length, devices=n, method="compiled", seconds=0.0,
                    **{k: scale * a[k] + b[k] / n for k in a})

    small, large = row(8), row(32)
    other_length = row(8, length=128, scale=2.0)  # only the per-row part (a) grows with the length
    for n in (4, 16, 64):
        fitted = memory_plan.fitted(small, large, other_length, n)
        expected = row(n, length=128, scale=2.0)
        for k in a:
            assert fitted[k] == pytest.approx(expected[k])
        assert fitted["method"].startswith("fit a + b/n")


@pytest.mark.skipif(len(jax.devices()) < 8, reason="needs 8 (simulated) devices")
def test_tiny_memory_table(tmp_path):
    out = tmp_path / "memory_plan"
    memory_plan.main(["--config", "configs/train_tiny_cpu.py", "--models", "tiny-qwen3", "--seq-lens", "128",
                      "--devices", "2", "8", "--topologies", "2xa100-80", "4xa100-80", "8xa100-80",
                      "--check", "tiny-qwen3", "128", "4", "--out", str(out)])
    data = json.loads(out.with_suffix(".json").read_text())
    rows = {r["devices"]: r for r in data["rows"]}
    assert sorted(rows) == [2, 4, 8] and rows[4]["method"].startswith("fit")
    assert rows[2]["peak"] > rows[4]["peak"] > rows[8]["peak"] > 0  # the state is split n ways
    assert abs(data["fit_check"]["relative_error"]) < FIT_TOLERANCE
    assert {f["topology"] for f in data["fits"]} == {"2xa100-80", "4xa100-80", "8xa100-80"}
    assert all(f["fits"] and f["headroom"] > 0.9 for f in data["fits"])  # megabytes on 80 GiB cards
    table = out.with_suffix(".md").read_text()
    assert "| tiny-qwen3 | 128 |" in table and "Fit check" in table
