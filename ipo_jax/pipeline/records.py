"""The pair builder's records: what one chunk of prompts becomes, typed.

* `Trajectory` -- one sampled completion of a prompt record, judged (a row of
  ``chunks/trajectories-NNNNN.jsonl``; the intervened trajectories of a round are Trajectories
  too, judged but not written).
* `InterventionJob` -- one trigger's intervention on one unsafe original between rounds: the
  prefix z[<h] and the chosen ids so far (the trigger, and in later rounds the kept part of the
  last continuation and the trigger again).
* `PairRecord` -- one preference pair, with ONE constructor (`PairRecord.build`) for every kind:
  ``intervention`` (IPO), ``over_refusal`` (benign prompts) and ``full_trajectory`` (the DPO
  baseline). `PAIR_FIELDS` says which keys each kind writes after the common ones.
* `ChunkStats` (IPO) and `FullTrajectoryStats` (the baseline) -- a chunk's counters as fields,
  summed across chunks (`summary`) into the keys summary.json has always had.

Also what every builder shares: `is_finished` (may a trajectory be a pair side), `prompt_text`
(the user's words, for judges), `judge_completions` (one judge call for a list of completions)
and `chunk_seed` (a chunk stage's sampling seed).

The JSON written from these records keeps its key order (the order of the dict literals it
replaced), so pairs.jsonl, the trajectory files and summary.json are byte-identical to the
files of earlier versions at the same seeds.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

from ipo_jax.data.pairs import prompt_messages
from ipo_jax.judging import Judge, Verdict, judge_trajectories, trajectory_label
from ipo_jax.judging.records import CueResult
from ipo_jax.rollout import Completion, Policy, is_refusal, split_completion

PromptRecord = dict[str, Any]  # a checked prompt record (ipo_jax/data/prompts.py): id, prompt, kind, [system]

ENDED = ("stop", "eos")  # finish reasons of a generation that ended its turn ("eos": older policies' word)


def is_finished(text: str, finish_reason: str) -> bool:
    """Whether a trajectory can be a pair side: it ended on its own, its reasoning is closed and
    an answer follows (a cut-off or answerless trajectory is never safe, chosen or rejected)."""
    _, answer, closed = split_completion(text)
    return finish_reason in ENDED and closed and bool(answer.strip())


def prompt_text(record: PromptRecord) -> str:
    """The user's words, for judges and detectors."""
    return "\n".join(m["content"] for m in prompt_messages(record) if m["role"] == "user")


def verdict_dicts(verdicts: Mapping[str, Verdict]) -> dict[str, dict]:
    return {part: v.to_dict() for part, v in verdicts.items()}


# ------------------------------------------------------------------------------- seeds

# A chunk's sampling seeds are (seed * CHUNK_STRIDE + chunk) * STAGE_STRIDE + stage: a function of
# (seed, chunk, stage) alone, never of the run's history, so a resumed chunk samples again exactly
# what it sampled before. CHUNK_STRIDE is a prime above any chunk count, so two (seed, chunk) pairs
# never meet; STAGE_STRIDE leaves room for the stages of one chunk below it.
SEED_CHUNK_STRIDE = 1_000_003
SEED_STAGE_STRIDE = 101
ORIGINALS_STAGE = 0  # the harmful prompts' originals; intervention round r samples as stage r (1, 2, ...)
FULL_TRAJECTORY_STAGE = 77  # the baseline's samples (another build kind: never in the same run as rounds)
BENIGN_STAGE = 99  # the benign prompts' candidates (a run with 99 or more rounds would share it)


def chunk_seed(seed: int, chunk_index: int, stage: int) -> int:
    """The sampling seed of one stage of one chunk (see the constants above)."""
    return (seed * SEED_CHUNK_STRIDE + chunk_index) * SEED_STAGE_STRIDE + stage


# --------------------------------------------------------------------------- trajectories


@dataclasses.dataclass(frozen=True)
class Trajectory:
    """One sampled completion of a prompt record and its judgement."""

    record: PromptRecord
    kind: str  # harmful | benign (which set it was sampled for)
    completion: Completion
    label: str  # safe | unsafe | error (`ipo_jax.judging.trajectory_label`)
    verdicts: Mapping[str, Verdict]
    policy_id: str

    @property
    def finished(self) -> bool:
        return is_finished(self.completion.text, self.completion.finish_reason)

    @property
    def is_refusal(self) -> bool:
        """The project's one refusal rule on the answer (`ipo_jax.rollout.is_refusal`)."""
        return is_refusal(split_completion(self.completion.text)[1])

    def to_dict(self) -> dict[str, Any]:
        """The trajectory file's row (benign rows say whether the answer is a refusal)."""
        c = self.completion
        row = dict(id=self.record["id"], kind=self.kind, completion=c.text, completion_ids=list(c.ids),
                   finish_reason=c.finish_reason, label=self.label)
        if self.kind == "benign":
            row["refusal"] = self.is_refusal
        row.update(verdicts=verdict_dicts(self.verdicts), policy=self.policy_id)
        return row


def judge_completions(judge: Judge, items: Sequence[tuple[PromptRecord, Completion]], *, kind: str,
                      policy_id: str) -> list[Trajectory]:
    """A `Trajectory` per (record, completion): reasoning and answer of all of them judged in ONE call."""
    parts = [(prompt_text(record), *split_completion(completion.text)[:2]) for record, completion in items]
    return [Trajectory(record, kind, completion, trajectory_label(verdicts), verdicts, policy_id)
            for (record, completion), verdicts in zip(items, judge_trajectories(judge, parts))]


@dataclasses.dataclass(frozen=True)
class InterventionJob:
    """One trigger's intervention on one unsafe original: continue the chat prompt +
    ``prefix_ids + chosen_ids`` in round `round`."""

    original: Trajectory  # the unsafe original z, finished
    cue: CueResult  # the original's first compliance cue (its sentence starts at h)
    trigger_index: int
    round: int
    prefix_ids: list[int]  # z[<h]
    chosen_ids: list[int]  # the chosen side so far: the trigger (rounds > 1: kept continuation + trigger)

    @property
    def record(self) -> PromptRecord:
        return self.original.record

    @property
    def rejected(self) -> list[int]:
        """z[>=h]: the original's ids from h on."""
        return list(self.original.completion.ids)[len(self.prefix_ids) :]

    @property
    def prompt_ids(self) -> list[int]:
        """The completion prefix the round continues (after the chat prompt)."""
        return self.prefix_ids + self.chosen_ids


# --------------------------------------------------------------------------------- pairs

# The keys each kind of pair writes after the common ones (id ... finish_reasons), in file order.
PAIR_FIELDS: dict[str, tuple[str, ...]] = {
    "intervention": ("h", "trigger", "trigger_index", "round", "kind", "verdicts", "policy", "sampling"),
    "over_refusal": ("h", "trigger", "trigger_index", "round", "kind", "policy", "sampling"),
    "full_trajectory": ("kind", "policy"),
}


def _pair_id(kind: str, record_id: str, trigger_index: int | None, round_no: int) -> str:
    return {"intervention": f"{record_id}/t{trigger_index}/r{round_no}", "over_refusal": f"{record_id}/over-refusal",
            "full_trajectory": f"{record_id}/full"}[kind]


@dataclasses.dataclass(frozen=True)
class PairRecord:
    """One preference pair: after the chat prompt and the shared ``prefix``, ``chosen`` is
    preferred over ``rejected``; each side's text is the decode of its ids as sampled."""

    id: str
    prompt_id: str
    prompt: Any  # the record's prompt: text or chat messages
    system: str | None
    prefix: str
    chosen: str
    rejected: str
    prefix_ids: list[int]
    chosen_ids: list[int]
    rejected_ids: list[int]
    finish_reasons: dict[str, str]  # {"chosen": ..., "rejected": ...}
    kind: str  # a key of PAIR_FIELDS
    policy: str
    h: dict[str, int]  # where the prefix ends: char (of the prefix text), sentence (the cue's), token
    trigger: str | None
    trigger_index: int | None
    round: int
    verdicts: dict[str, Any] | None
    sampling: dict[str, Any]

    @classmethod
    def build(cls, kind: str, record: PromptRecord, policy: Policy, *, chosen: Completion, rejected: Completion,
              prefix: str = "", prefix_ids: Sequence[int] = (), cue_sentence: int = 0, trigger: str | None = None,
              trigger_index: int | None = None, round_no: int = 0, verdicts: dict[str, Any] | None = None) -> PairRecord:
        """The pair of `kind` for `record`: prefix (text and ids; empty for over-refusal and
        full-trajectory pairs), chosen and rejected sides as `Completion`s (text, finish reason, ids)."""
        if kind not in PAIR_FIELDS:
            raise ValueError(f"pair kind {kind!r}: expected one of {', '.join(PAIR_FIELDS)}")
        return cls(
            id=_pair_id(kind, record["id"], trigger_index, round_no), prompt_id=record["id"], prompt=record["prompt"],
            system=record.get("system") or None, prefix=prefix, chosen=chosen.text, rejected=rejected.text,
            prefix_ids=list(prefix_ids), chosen_ids=list(chosen.ids), rejected_ids=list(rejected.ids),
            finish_reasons={"chosen": chosen.finish_reason, "rejected": rejected.finish_reason}, kind=kind,
            policy=policy.policy_id, h=dict(char=len(prefix), sentence=cue_sentence, token=len(prefix_ids)),
            trigger=trigger, trigger_index=trigger_index, round=round_no, verdicts=verdicts,
            sampling=dataclasses.asdict(policy.sampling),
        )

    def to_dict(self) -> dict[str, Any]:
        """The pairs.jsonl row: the common keys, then the kind's (`PAIR_FIELDS`)."""
        row: dict[str, Any] = dict(id=self.id, prompt_id=self.prompt_id, prompt=self.prompt)
        if self.system:
            row["system"] = self.system
        row.update(prefix=self.prefix, chosen=self.chosen, rejected=self.rejected, prefix_ids=self.prefix_ids,
                   chosen_ids=self.chosen_ids, rejected_ids=self.rejected_ids, finish_reasons=self.finish_reasons)
        row.update({name: getattr(self, name) for name in PAIR_FIELDS[self.kind]})
        return row


# ----------------------------------------------------------------------------- statistics


@dataclasses.dataclass
class _Counters:
    """A chunk's counters as fields; `extra` holds counters added by others (the judge budget's
    request counts), written after the fields."""

    extra: dict[str, int] = dataclasses.field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        row = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "extra"}
        return {**row, **self.extra}

    @classmethod
    def from_dict(cls, row: Mapping[str, Any]) -> _Counters:
        """Counters as a progress record holds them (keys this version does not know go to `extra`)."""
        names = {f.name for f in dataclasses.fields(cls)} - {"extra"}
        return cls(**{k: v for k, v in row.items() if k in names}, extra={k: v for k, v in row.items() if k not in names})

    @classmethod
    def total(cls, rows: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
        """The counters of several chunks summed (fields in order, then the others as first seen)."""
        total = cls().to_dict()
        for row in rows:
            for key, value in cls.from_dict(row).to_dict().items():
                if isinstance(value, dict):  # per-round counts
                    total[key] = {**total[key], **{r: total[key].get(r, 0) + n for r, n in value.items()}}
                else:
                    total[key] = total.get(key, 0) + value
        return total


@dataclasses.dataclass
class ChunkStats(_Counters):
    """The intervention's counters for one chunk (the module docstring of
    ipo_jax/pipeline/intervene.py says what each cut-off counter counts)."""

    prompts: int = 0
    harmful: int = 0
    benign: int = 0
    judge_errors: int = 0
    safe_original: int = 0
    unsafe_original: int = 0
    cue_found: int = 0
    no_cue: int = 0
    cue_errors: int = 0
    generations: int = 0
    budget_exhausted: int = 0
    pairs: int = 0
    over_refusal_pairs: int = 0
    success_per_round: dict[str, int] = dataclasses.field(default_factory=dict)  # round (as text) -> safe pairs
    failed_after_rounds: int = 0
    truncated_generations: int = 0
    cut_off_original: int = 0
    cut_off_rejected: int = 0
    cut_off_chosen: int = 0
    cut_off_benign: int = 0
    prompt_too_long: int = 0

    def count_success(self, round_no: int) -> None:
        self.success_per_round[str(round_no)] = self.success_per_round.get(str(round_no), 0) + 1

    @classmethod
    def summary(cls, rows: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
        """summary.json: the chunks' counters summed, with the shares derived from them."""
        total = cls.total(rows)
        judged = total["safe_original"] + total["unsafe_original"]
        total["unsafe_share"] = total["unsafe_original"] / judged if judged else None
        total["cue_found_share"] = total["cue_found"] / total["unsafe_original"] if total["unsafe_original"] else None
        total["generations_per_prompt"] = total["generations"] / total["prompts"] if total["prompts"] else None
        return total


@dataclasses.dataclass
class FullTrajectoryStats(_Counters):
    """The full-trajectory baseline's counters for one chunk (ipo_jax/pipeline/baselines.py)."""

    KIND: ClassVar[str] = "full_trajectory"

    prompts: int = 0
    harmful: int = 0
    samples: int = 0
    safe: int = 0
    unsafe: int = 0
    judge_errors: int = 0
    cut_off: int = 0
    no_safe_sample: int = 0
    no_unsafe_sample: int = 0
    pairs: int = 0

    @classmethod
    def summary(cls, rows: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
        total = cls.total(rows)
        judged = total["safe"] + total["unsafe"]
        return dict(kind=cls.KIND, **total, unsafe_share=total["unsafe"] / judged if judged else None)


@dataclasses.dataclass(frozen=True)
class ChunkResult:
    """What a builder makes of one chunk of prompt records."""

    pairs: list[PairRecord]
    trajectories: list[Trajectory]
    stats: _Counters


__all__ = ["BENIGN_STAGE", "ChunkResult", "ChunkStats", "ENDED", "FULL_TRAJECTORY_STAGE", "FullTrajectoryStats",
           "InterventionJob", "ORIGINALS_STAGE", "PAIR_FIELDS", "PairRecord", "PromptRecord", "Trajectory",
           "chunk_seed", "is_finished", "judge_completions", "prompt_text", "verdict_dicts"]
