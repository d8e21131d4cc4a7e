"""One length rule for every layout (ipo_jax/data/pairs.py fit_to_length, ipo_jax/train/data.py
fit_pairs): a pair whose prompt + prefix + chosen + rejected exceed data.max_length is dropped
whole, never cut; the kept set is the same in both layouts; dropped pairs are listed with their
reason, and more than data.max_dropped_share of them stops `ipo-jax train` with exit 2."""

import json
import re
from pathlib import Path

import ml_collections
import numpy as np
import pytest

from ipo_jax.cli import main
from ipo_jax.data.pairs import TokenizedPair, fit_to_length
from ipo_jax.train import data
from ipo_jax.train.errors import TrainingError

REPO = Path(__file__).resolve().parents[1]
CONFIG = str(REPO / "configs" / "train_tiny_cpu.py")
SAMPLE_PAIRS = REPO / "configs" / "sample_pairs.jsonl"


def _ids(n, start=3):
    return np.arange(start, start + n, dtype=np.int32) % 1000


def _config(layout, max_length=8192, share=0.05):
    return ml_collections.ConfigDict({"data": {"max_length": max_length, "layout": layout, "max_dropped_share": share}})


def _mix():
    """19 pairs that fit 8192 and the issue's 5000 / 6000-token pair (11,100 tokens with its trunk)."""
    short = [TokenizedPair(f"s{i}", _ids(40), _ids(60 + i), _ids(500), _ids(700)) for i in range(19)]
    return short + [TokenizedPair("long", _ids(40), _ids(60), _ids(5000), _ids(6000))]


@pytest.mark.parametrize("layout", ["prefix_shared", "duplicated"])
def test_a_5000_6000_token_pair_is_dropped_whole_in_both_layouts(layout):
    pairs = _mix()
    kept, dropped = data.fit_pairs(pairs, _config(layout))
    # the same kept set in both layouts, each pair untouched (was: prefix_shared cut it to
    # 3296 / 3296 tokens, duplicated kept 5000 / 6000)
    assert [p.id for p in kept] == [f"s{i}" for i in range(19)]
    assert all(k is p for k, p in zip(kept, pairs))
    assert [(d["id"], d["reason"], d["tokens"], d["chosen"], d["rejected"]) for d in dropped] == [
        ("long", "pair_too_long", 11100, 5000, 6000)]
    assert dropped[0]["max_length"] == 8192  # as skipped_pairs.jsonl will list it


def test_no_pair_is_ever_cut_at_any_length():
    rng = np.random.default_rng(0)
    pairs = [TokenizedPair(str(i), _ids(rng.integers(1, 50)), _ids(rng.integers(0, 80)), _ids(rng.integers(1, 90)),
                           _ids(rng.integers(1, 90))) for i in range(50)]
    for max_length in (8, 64, 128, 200, 400):
        for pair in pairs:
            fitted = fit_to_length(pair, max_length)
            assert fitted is (pair if len(pair.prompt) + len(pair.prefix) + len(pair.chosen) + len(pair.rejected) <= max_length else None)


def test_a_drop_share_over_the_limit_stops_before_the_model_loads():
    pairs = _mix()[1:]  # 18 short + the long one: 1 of 19 = 5.3% > 5%
    with pytest.raises(TrainingError) as e:
        data.fit_pairs(pairs, _config("duplicated"), where={"long": "pairs.jsonl:19"})
    assert str(e.value).startswith(
        "1 of 19 pairs (5.3%) are longer than data.max_length 8192 and would be dropped (more than "
        "data.max_dropped_share 0.05); the longest, 'long' (pairs.jsonl:19), has 11100 tokens "
        "(prompt + prefix + chosen + rejected); raise data.max_length to at least 11100")
    # 1 of 20 is exactly 5%: not more than the limit
    kept, dropped = data.fit_pairs(_mix(), _config("duplicated"))
    assert (len(kept), len(dropped)) == (19, 1)


def _pairs_with_long_ones(path: Path, n_long: int) -> Path:
    """The 16 sample pairs (all under 128 tiny-tokenizer tokens) and n_long pairs whose chosen side
    is over a thousand tokens (a thousand distinct numbers)."""
    lines = SAMPLE_PAIRS.read_text().splitlines()
    for k in range(n_long):
        record = json.loads(lines[k])
        record.update(id=f"long-{k}", chosen=" ".join(str(i) for i in range(1000 * k, 1000 * (k + 1))) + "\n</think>\n\nNo.")
        lines.append(json.dumps(record))
    path.write_text("\n".join(lines) + "\n")
    return path


def test_train_exits_2_naming_the_longest_pair_when_too_many_would_be_dropped(tmp_path, capsys):
    pairs = _pairs_with_long_ones(tmp_path / "pairs.jsonl", 1)  # 1 of 17: 5.9%
    out = tmp_path / "out"
    args = ["train", "--config", CONFIG, f"--config.train.out={out}", f"--config.reference.cache_dir={out}",
            f"--config.data.pairs={pairs}"]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert re.search(r"1 of 17 pairs \(5\.9%\) are longer than data\.max_length 256 and would be dropped \(more than "
                     r"data\.max_dropped_share 0\.05\); the longest, 'long-0' \(.*pairs\.jsonl:17\), has \d{4} tokens .*"
                     r"raise data\.max_length to at least \d{4}", err), err
    # one line ('.' matches no newline), and the run stopped before anything was written
    assert len(err.splitlines()) == 1 and not out.exists()


def test_train_within_the_share_drops_the_long_pair_and_trains(tmp_path, capsys):
    pairs = _pairs_with_long_ones(tmp_path / "pairs.jsonl", 1)
    out = tmp_path / "out"
    args = ["train", "--config", CONFIG, f"--config.train.out={out}", f"--config.reference.cache_dir={out}",
            f"--config.data.pairs={pairs}", "--config.data.max_dropped_share=0.1", "--config.train.max_steps=1"]
    assert main(args) == 0
    stdout = capsys.readouterr().out
    assert re.search(r"pairs: 17 read, 16 used, 1 dropped as longer than data\.max_length 256 \(never cut\): "
                     r"pair_too_long 1, 5\.9% \(see .*skipped_pairs\.jsonl\)", stdout), stdout
    (line,) = (out / "skipped_pairs.jsonl").read_text().splitlines()
    record = json.loads(line)
    assert record["id"] == "long-0" and record["reason"] == "pair_too_long" and record["at"].endswith("pairs.jsonl:17")
    assert record["tokens"] == record["prompt"] + record["prefix"] + record["chosen"] + record["rejected"] > 256
    assert (out / "final").is_dir()


def test_max_dropped_share_is_a_share(tmp_path, capsys):
    args = ["train", "--config", CONFIG, f"--config.train.out={tmp_path / 'out'}", "--config.data.max_dropped_share=1.5"]
    assert main(args) == 2
    assert "config.data.max_dropped_share is 1.5; expected a finite number in [0, 1]" in capsys.readouterr().err
