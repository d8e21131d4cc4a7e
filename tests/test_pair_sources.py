"""Several pair files with mixing weights (data.pairs 'a.jsonl,b.jsonl:0.5'): parsing and its
errors, the per-epoch counts, ids unique across files, the reference cache keyed by every file,
and a packed, mixed training run that resumes exactly."""

import json
from pathlib import Path

import numpy as np
import pytest

from ipo_jax.data.pairs import (
    PairBatches,
    PairFileError,
    TokenizedPair,
    mixture_members,
    parse_pair_sources,
    read_pair_sources,
)
from ipo_jax.train import reference as reference_lib

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / "configs" / "sample_pairs.jsonl"


def _write(path, ids):
    records = [json.loads(line) for line in SAMPLE.read_text().splitlines() if line.strip()]
    path.write_text("".join(json.dumps({**records[i % len(records)], "id": pid}) + "\n" for i, pid in enumerate(ids)))
    return path


def test_a_spec_names_files_with_optional_weights(tmp_path):
    a, b = _write(tmp_path / "a.jsonl", ["a0"]), _write(tmp_path / "b.jsonl", ["b0"])
    assert parse_pair_sources(str(a)) == parse_pair_sources(f"{a}:1")
    sources = parse_pair_sources(f"{a}, {b}:0.25")
    assert [(s.path, s.weight) for s in sources] == [(a, 1.0), (b, 0.25)]
    odd = _write(tmp_path / "x:2.jsonl", ["x0"])  # an existing file whose name holds ':' is a path
    assert [(s.path, s.weight) for s in parse_pair_sources(str(odd))] == [(odd, 1.0)]


@pytest.mark.parametrize(
    "spec, message",
    [
        ("{a}:abc", r"weight 'abc' of .*a.jsonl is not a number"),
        ("{a}:-1", r"weight '-1' of .*a.jsonl must be a finite number > 0"),
        ("{a}:0", r"weight '0' of .*a.jsonl must be a finite number > 0"),
        ("{a}:nan", r"weight 'nan' of .*a.jsonl must be a finite number > 0"),
        ("{a},{missing}:0.5", r"pair file .*missing.jsonl not found"),
        ("{a},", r"expected one pair file or comma-separated files"),
        ("{a},{a}:2", r"a file is named twice"),
        ("{dir}", r"pair file .* is a directory"),
    ],
)
def test_bad_specs_are_value_errors_naming_the_spec_and_file(tmp_path, spec, message):
    a = _write(tmp_path / "a.jsonl", ["a0"])
    spec = spec.format(a=a, missing=tmp_path / "missing.jsonl", dir=tmp_path)
    with pytest.raises(ValueError, match=r"data.pairs '.*': " + message):
        parse_pair_sources(spec)


@pytest.mark.parametrize("weight, message", [
    ("1e308", r"weight 1e\+308 of .*a.jsonl puts 1e\+308 x its 2 pairs in every epoch; expected a weight from 0.25 to 5e\+07 "
              r"\(1 to 100,000,000 pairs per epoch\)"),
    ("5.1e7", r"weight 5.1e\+07 of .*a.jsonl puts 5.1e\+07 x its 2 pairs in every epoch"),
    ("0.2", r"weight 0.2 of .*a.jsonl puts none of its 2 pairs in every epoch; expected a weight from 0.25"),
    ("1e-300", r"weight 1e-300 of .*a.jsonl puts none of its 2 pairs"),
])
def test_a_weight_must_put_1_to_1e8_pairs_in_an_epoch(tmp_path, weight, message):
    a = _write(tmp_path / "a.jsonl", ["a0", "a1"])
    with pytest.raises(PairFileError, match=r"data.pairs '.*': " + message):
        read_pair_sources(f"{a}:{weight}")


def test_the_weights_at_the_bounds_are_accepted(tmp_path):
    a = _write(tmp_path / "a.jsonl", ["a0", "a1"])
    for weight, pairs_per_epoch in (("0.25", 1), ("5e7", 10**8)):  # round(w * 2) half up
        records, sources = read_pair_sources(f"{a}:{weight}")
        assert len(records) == 2 and int(sources[0].weight * 2 + 0.5) == pairs_per_epoch


@pytest.mark.parametrize("ids, message", [
    ({"prefix_ids": [2**31], "chosen_ids": [1], "rejected_ids": [2]},
     r"a.jsonl:2 \(id 'a1'\): field 'prefix_ids' item 0 is token id 2147483648, outside 0..2147483647"),
    ({"prefix_ids": [], "chosen_ids": [10**30], "rejected_ids": [2]}, r"field 'chosen_ids' item 0 is token id 1000000000000000000000"),
    ({"prefix_ids": [], "chosen_ids": [], "rejected_ids": [2]}, r"field 'chosen_ids' is empty"),
])
def test_token_ids_out_of_int32_are_refused_when_read(tmp_path, ids, message):
    path = _write(tmp_path / "a.jsonl", ["a0", "a1"])
    lines = path.read_text().splitlines()
    path.write_text(lines[0] + "\n" + json.dumps({**json.loads(lines[1]), **ids}) + "\n")
    with pytest.raises(PairFileError, match=message):
        read_pair_sources(str(path))


def test_ids_must_be_unique_across_files(tmp_path):
    a, b = _write(tmp_path / "a.jsonl", ["x0", "x1"]), _write(tmp_path / "b.jsonl", ["y0", "x1"])
    with pytest.raises(PairFileError, match=r"b.jsonl:2: id 'x1' is also at .*a.jsonl:2; ids must be unique across"):
        read_pair_sources(f"{a},{b}")
    records, sources = read_pair_sources(f"{a},{_write(tmp_path / 'c.jsonl', ['c0'])}:3")
    assert [r["_source"] for r in records] == [0, 0, 1] and sources[1].weight == 3.0


def test_weights_set_each_files_count_per_epoch():
    sources = [0] * 10 + [1] * 7
    members = mixture_members(sources, [1.0, 0.5], seed=0)
    counts = np.bincount(np.asarray(sources)[members])
    assert counts.tolist() == [10, 4]  # round(0.5 * 7) = 3.5, half up: 4
    assert len(set(members[members >= 10].tolist())) == 4  # drawn without replacement
    repeated = mixture_members(sources, [2.5, 1.0], seed=0)
    per_pair = np.bincount(repeated, minlength=17)
    assert np.bincount(np.asarray(sources)[repeated]).tolist() == [25, 7]
    assert set(per_pair[:10].tolist()) == {2, 3} and (per_pair[10:] == 1).all()  # 2 copies each, 5 get a third
    assert np.array_equal(mixture_members(sources, [1.0, 0.5], seed=0), members)
    assert any(not np.array_equal(mixture_members(sources, [1.0, 0.5], seed=s), members) for s in range(1, 5))


def test_batches_visit_the_mixture_every_epoch():
    rng = np.random.RandomState(0)
    ids = lambda k: rng.randint(3, 99, k).astype(np.int32)  # noqa: E731
    pairs = [TokenizedPair(str(i), ids(4), ids(3), ids(2), ids(2), source=int(i >= 6)) for i in range(10)]
    for packing in (False, True):
        batches = PairBatches(pairs, 2, 1, "prefix_shared", "cue", [64], seed=3, packing=packing, weights=[0.5, 2.0])
        for epoch in (0, 1):
            seen = np.concatenate([batches.batch(epoch, b)[1] for b in range(batches.batches_per_epoch)])
            seen = seen[seen >= 0]
            assert sorted(seen.tolist()) == sorted(batches.members.tolist())
            assert np.bincount([pairs[i].source for i in seen]).tolist() == [3, 8]


def test_one_file_with_a_weight_is_subsampled_and_without_one_is_unchanged():
    rng = np.random.RandomState(1)
    pairs = [TokenizedPair(str(i), rng.randint(3, 99, 4), rng.randint(3, 99, 3), rng.randint(3, 99, 2), rng.randint(3, 99, 2)) for i in range(9)]
    half = PairBatches(pairs, 2, 1, "prefix_shared", "cue", [64], seed=3, weights=[0.5])
    assert len(half.members) == 5 and half.batches_per_epoch == 3
    assert "f.jsonl: 9 pairs x 0.5 = 5" in half.describe(["f.jsonl"])
    plain, weighted_one = (PairBatches(pairs, 2, 1, "prefix_shared", "cue", [64], seed=3, weights=w) for w in ((), [1.0]))
    for epoch in (0, 1):  # weight 1 is exactly the unweighted order (old runs resume unchanged)
        np.testing.assert_array_equal(plain.order(epoch), weighted_one.order(epoch))
    assert weighted_one.describe(["f.jsonl"]) == "epoch: 9 pairs, 5 batches"


def test_reference_cache_is_keyed_and_named_by_every_file(tmp_path):
    a, b = _write(tmp_path / "a.jsonl", ["a0"]), _write(tmp_path / "b.jsonl", ["b0"])
    single = reference_lib.fingerprint("preset:tiny-qwen3", a, {"mask_from": "cue"})
    assert single == reference_lib.fingerprint("preset:tiny-qwen3", [a], {"mask_from": "cue"})
    both = reference_lib.fingerprint("preset:tiny-qwen3", [a, b], {"mask_from": "cue"})
    assert both != single
    b.write_text(b.read_text().replace('"b0"', '"b1"'))
    assert reference_lib.fingerprint("preset:tiny-qwen3", [a, b], {"mask_from": "cue"}) != both
    assert reference_lib.cache_file_for([a]) == tmp_path / "a.jsonl.reference-logps.npz"
    mixed = reference_lib.cache_file_for([a, b], tmp_path / "cache")
    assert mixed.parent == tmp_path / "cache" and mixed.name.startswith("a+b-") and mixed.name.endswith(".reference-logps.npz")
    assert mixed != reference_lib.cache_file_for([b, a], tmp_path / "cache")


def test_a_bad_weight_is_exit_2_from_the_cli(tmp_path, capsys):
    from ipo_jax.cli import main

    args = ["train", "--config", str(REPO / "configs" / "train_tiny_cpu.py"), f"--config.train.out={tmp_path / 'run'}",
            f"--config.data.pairs={SAMPLE},{SAMPLE}:x"]
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "weight 'x'" in err[0] and "sample_pairs.jsonl" in err[0]


def _train(out, steps, *extra):
    from ipo_jax.cli import main

    extra_file = out.parent / "extra.jsonl"
    if not extra_file.exists():
        _write(extra_file, [f"extra-{i}" for i in range(8)])
    args = ["train", "--config", str(REPO / "configs" / "train_tiny_cpu.py"), f"--config.train.out={out}",
            f"--config.reference.cache_dir={out}", f"--config.train.max_steps={steps}", "--config.train.save_every=2",
            "--config.data.packing=True", "--config.data.max_length=1024", "--config.data.buckets=()",
            "--config.data.micro_batches=1", f"--config.data.pairs={SAMPLE},{extra_file}:0.5", *extra]
    assert main(args) == 0
    return {m["step"]: m for m in map(json.loads, (out / "metrics.jsonl").read_text().splitlines())}


def test_a_packed_mixed_run_trains_and_resumes_exactly(tmp_path, capsys):
    import shutil

    straight = _train(tmp_path / "straight", 3)
    log = capsys.readouterr().out
    assert "sample_pairs.jsonl: 16 pairs x 1 = 16" in log and "extra.jsonl: 8 pairs x 0.5 = 4" in log
    assert "packing:" in log and "sample_pairs+extra-" in log  # the mixed reference cache's name
    assert all(m["pairs"] == 20 for m in straight.values())  # one epoch (20 pairs) per step at these sizes
    # as if killed after step 2's checkpoint: step 3 is recomputed from (epoch, batch) and the seed
    shutil.copytree(tmp_path / "straight", tmp_path / "resumed")
    shutil.rmtree(tmp_path / "resumed" / "checkpoints" / "3")
    shutil.rmtree(tmp_path / "resumed" / "final")
    metrics = tmp_path / "resumed" / "metrics.jsonl"
    metrics.write_text("".join(l + "\n" for l in metrics.read_text().splitlines() if json.loads(l)["step"] <= 2))
    resumed = _train(tmp_path / "resumed", 3)
    assert "resumed from" in capsys.readouterr().out
    assert resumed[3]["loss"] == straight[3]["loss"] and resumed[3]["pairs"] == straight[3]["pairs"]
