"""The whole build-pairs stage on two `ipo-jax serve` servers on loopback and no other service:
the policy on /v1/completions, the HTTP judge and cue detector on /v1/chat/completions (behind
an API key). Both serve the tiny random model of serve_support, whose judge replies are not
verdicts: the judge's probe and context check pass (GET /models), its first batch of requests
all come back without a verdict (an empty reply cut at max_tokens), and the stage stops as it
does for any failing judge -- exit 5 with one line naming the judge endpoint, its count of failed
requests the judge server's -- having sampled through the policy server. (A judge that answers
real verdicts needs a trained model; the pattern judge covers the pairs themselves elsewhere.)"""

from __future__ import annotations

import dataclasses
import json
import re

import pytest
from serve_support import ROOT, serving, tiny_served, tiny_world

from ipo_jax.serve import Limits

KEY_ENV = "IPO_JAX_TEST_JUDGE_KEY"
# short system prompts and one short example per kind, so the judge's requests fit the tiny
# model's 512-token context (the defaults need about 1,300 tokens of it)
SYSTEM = {"reasoning": "Label the reasoning: safe or unsafe.", "answer": "Label the answer: safe or unsafe.",
          "cue": "Give the number of the first compliance cue, or none."}
EXAMPLES = [{"kind": "reasoning", "prompt": "A question", "text": "I will not help.", "answer": "safe"},
            {"kind": "answer", "prompt": "A question", "text": "No.", "answer": "safe"},
            {"kind": "cue", "prompt": "A question", "sentences": ["Let me think."], "answer": "none"}]


@pytest.fixture(scope="module")
def servers():
    """(policy URL, policy engine, judge URL, judge engine): the shared tiny model under two names."""
    shared = tiny_served()
    engines = []
    with serving(dataclasses.replace(shared, name="policy"), None, engines) as policy, \
            serving(dataclasses.replace(shared, name="judge", reasoning_parser="none"), Limits(api_key="judge-key"),
                    engines) as judge:
        yield policy, engines[0], judge, engines[1]


def test_build_pairs_with_policy_and_judge_on_ipo_jax_serve(servers, tmp_path, monkeypatch, capsys):
    from ipo_jax.cli import main

    policy_url, policy_engine, judge_url, judge_engine = servers
    monkeypatch.setenv(KEY_ENV, "judge-key")
    world = tiny_world()
    (tmp_path / "prompts.json").write_text(json.dumps(SYSTEM))
    (tmp_path / "few_shot.jsonl").write_text("".join(json.dumps(e) + "\n" for e in EXAMPLES))
    code = main(["build-pairs", "--config", str(ROOT / "configs" / "pipeline_tiny_cpu.py"), "--config.model.init=",
                 f"--config.tokenizer={world / 'tokenizer'}", f"--config.prompts={world / 'prompts.jsonl'}",
                 f"--config.out={tmp_path / 'out'}", "--config.sampling.max_new_tokens=8",
                 "--config.policy.backend=http", f"--config.policy.base_url={policy_url}", "--config.policy.model=policy",
                 "--config.judge.backend=http", f"--config.judge.base_url={judge_url}", "--config.judge.model=judge",
                 f"--config.judge.api_key_env={KEY_ENV}", "--config.judge.max_retries=0", "--config.judge.max_tokens=8", "--config.judge.timeout=300",
                 f"--config.judge.tokenizer={world / 'tokenizer'}", f"--config.judge.prompts_file={tmp_path / 'prompts.json'}",
                 f"--config.judge.few_shot_file={tmp_path / 'few_shot.jsonl'}"])
    err = capsys.readouterr().err
    assert code == 5, err
    assert err.count("\n") == 1 and err.startswith("ipo-jax build-pairs: error: judge failed (http judge model 'judge' ")
    assert f"at {judge_url}/chat/completions" in err
    # the guard's count of failed requests is what reached the judge server (after its one probe)
    failed = re.search(r"all (\d+) requests of the first batch failed", err)
    assert failed, err
    assert judge_engine.stats["requests"] == 1 + int(failed.group(1)) == judge_engine.stats["finished_rows"]
    # the policy server sampled the trajectories those requests judged
    assert policy_engine.stats["requests"] >= 1 and policy_engine.stats["finished_rows"] >= int(failed.group(1))
    assert not (tmp_path / "out" / "pairs.jsonl").exists() or not (tmp_path / "out" / "pairs.jsonl").read_text()
