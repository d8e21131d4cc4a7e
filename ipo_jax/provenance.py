"""Provenance: what produced a stage's records, in its run.json and (compactly) in each record.

`stage_provenance(...)` is the block a stage writes into its run.json (``provenance``):

    id              sha256 (first 16 hex digits) of the block's other fields: what records point to
    stage           sample | build-pairs | csr | eval
    code            {"package": "ipo_jax", "version": <package version>, "git_commit": <HEAD of the
                    checkout the package was imported from, or null outside a git checkout>}
    prompts_sha256  sha256 of the prompt set (the records as read, sorted-key JSON)
    policy          {"backend": "local" (in-process sampler) | "http", "id": the policy id recorded in
                    records, "endpoint": the completions URL (http) or null, "model": the served
                    model id (http) or model.init (local), "server": what GET /models (and vLLM's
                    GET /version) said: served ids, max_model_len, root, version (http only)}
    judge, detector {"backend": pattern | llm | http, "name", "endpoint", "model", "server": as for
                    the policy plus the probe reply's system_fingerprint when the server gave one}

Each trajectory / pair / eval generation record carries ``provenance`` = `record_provenance`:
``{"id", "policy_backend", "policy_model"}`` -- the id points at the block in run.json (for
build-pairs, whose run.json may gather several blocks when a run is resumed with another code
version or backend, ``run.json["provenance"]`` maps each id to its block), and the two policy
fields tell in-process pairs from served ones without opening run.json.  Nothing here raises for
a missing git, a server without ``/models`` or a policy without settings.
"""

from __future__ import annotations

import functools
import hashlib
import json
import subprocess
from pathlib import Path
from typing import Any

from ipo_jax import __version__
from ipo_jax.judging.guard import backend_of


@functools.lru_cache(maxsize=1)
def code_version() -> dict[str, Any]:
    """The package version and the git commit of the checkout this package was imported from
    (None when it is not in a git checkout, git is missing, or anything else fails)."""

    root = Path(__file__).resolve().parents[1]
    commit = None
    try:
        top = subprocess.run(["git", "-C", str(root), "rev-parse", "--show-toplevel", "HEAD"], capture_output=True,
                             text=True, timeout=10, check=False)
        lines = top.stdout.split()
        if top.returncode == 0 and len(lines) == 2 and Path(lines[0]).resolve() == root:
            commit = lines[1]
    except (OSError, subprocess.SubprocessError, ValueError):
        commit = None
    return {"package": "ipo_jax", "version": __version__, "git_commit": commit}


def prompts_sha256(records) -> str:
    """sha256 of a prompt set (records without the reader's `_line`), sorted-key JSON."""
    text = json.dumps([{k: v for k, v in r.items() if k != "_line"} for r in records], sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def policy_provenance(policy) -> dict[str, Any]:
    """Backend, id, endpoint, served model and what the server says (http): the policy's own
    `ipo_jax.rollout.Policy.describe`, which never raises."""
    return policy.describe()


def _judge_entry(obj, server: dict[str, Any] | None) -> dict[str, Any] | None:
    if obj is None:
        return None
    entry = backend_of(obj)
    if server is not None:
        entry["server"] = {k: v for k, v in server.items() if k not in ("backend", "endpoint", "model", "name")}
    return entry


def stage_provenance(stage: str, *, policy=None, judge=None, detector=None, prompts_digest: str | None = None,
                     judge_servers: dict[str, Any] | None = None) -> dict[str, Any]:
    """The run.json block (module docstring)."""
    servers = judge_servers or {}
    block = {
        "stage": stage,
        "code": code_version(),
        "prompts_sha256": prompts_digest,
        "policy": policy_provenance(policy) if policy is not None else None,
        "judge": _judge_entry(judge, servers.get("judge")),
        "detector": _judge_entry(detector, servers.get("detector")),
    }
    digest = hashlib.sha256(json.dumps(block, sort_keys=True, default=str).encode("utf-8")).hexdigest()
    return {"id": digest[:16], **block}


def record_provenance(block: dict[str, Any]) -> dict[str, Any]:
    """What each record carries: the block's id and the policy backend and model."""
    policy = block.get("policy") or {}
    return {"id": block["id"], "policy_backend": policy.get("backend"), "policy_model": policy.get("model")}


__all__ = ["code_version", "policy_provenance", "prompts_sha256", "record_provenance", "stage_provenance"]
