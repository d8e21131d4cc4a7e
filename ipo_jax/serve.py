"""`ipo-jax serve`: our JAX sampler behind an OpenAI-compatible completions endpoint
(starlette + uvicorn), so the HTTP policy backend (`ipo_jax.rollout.http.HttpPolicy`) -- or any
OpenAI client -- can sample from a local checkpoint.

Routes (loopback by default; no authentication, so do not expose it):
  * ``POST /v1/completions`` -- the request fields below; the response is an OpenAI
    ``text_completion`` object: ``choices[k]`` = ``{index, text, finish_reason ("stop" |
    "length"), logprobs: null}`` plus ``token_ids`` and ``prompt_token_ids`` when
    ``return_token_ids`` is true, ordered prompt-major (``k = i * n + j`` for prompt i, choice
    j); ``usage`` counts each prompt's tokens once and every choice's sampled ids.
  * ``GET /v1/models`` -- the one served model (its id is ``--served-model-name``, by default
    the ``--model`` spec; ``max_model_len`` is the model's context).
  * ``GET /health`` -- 200 ``{"status": "ok"}``.

Request fields (anything else is an HTTP 400 naming the field):
  * ``prompt`` (required): a string, a list of strings, a list of token ids, or a list of
    token-id lists.  Strings are tokenised without special tokens added (the pipeline's
    ``encode_text``).  Each prompt must be non-empty and at most ``--max-prompt-length``
    tokens, ids must lie in the model's vocabulary, and prompt + ``max_tokens`` must fit the
    model's context (``max_position_embeddings``).
  * ``model``: when given, the served model's id (else HTTP 404, ``model_not_found``).
  * ``max_tokens`` (int >= 1, default 16), ``temperature`` (>= 0, default 1; 0 = greedy),
    ``top_p`` (in (0, 1], default 1), ``top_k`` (int; 0 or -1 = off, the default), ``n``
    (1..128 choices per prompt, default 1; at most 4096 prompts x n per request), ``stop`` (a string or a list of up to 8 non-empty
    strings: the row ends once its text contains one; the text is cut before it, the ids keep
    the token that completed it), ``return_token_ids`` (bool), ``seed`` (int in [0, 2**31)).
  * accepted only at their defaults: ``stream`` (false), ``echo`` (false), ``logprobs``
    (null), ``presence_penalty`` / ``frequency_penalty`` (0), ``best_of`` (null or n);
    ``user`` is accepted and ignored.

Seeds.  Choice j of every prompt of a request samples from its own key stream: choice 0 from
``PRNGKey(seed)``, choice j > 0 from ``PRNGKey(row_seed(seed, j))`` (`ipo_jax.sampling.row_seed`).
Every prompt of a list gets the same seeds (as in vLLM, each prompt of a list is its own request
with the request's parameters).  The in-process sampler gives row r the seed ``row_seed(seed,
r)`` and the sampler's rows are independent of their batch, so a one-prompt request with seed
``row_seed(seed, r)`` -- what the HTTP policy sends for row r -- samples exactly the tokens the
in-process policy samples for row r.  Without ``seed`` the server draws one at random.

Concurrency.  One worker thread owns the sampler.  Requests queue up; each time the worker is
free it takes every waiting request and runs those with the same settings (temperature, top-p,
top-k, max_tokens, stop) as one ``sampler.generate`` call -- batching concurrent requests
without changing any row's tokens, since every row has its own seed.  A failed generation is an
HTTP 500 for the requests of that call; the server keeps serving.

Running.  ``ipo-jax serve --model ... [--port 0]`` prints one line with the URL once it listens
(``--port 0`` picks a free port); Ctrl-C (SIGINT) shuts it down and exits with code 130, as an
interrupted stage does.

Errors are JSON: ``{"error": {"message", "type": "invalid_request_error", "param", "code"}}``
with HTTP 400 (bad JSON, unknown fields, wrong types, empty prompts, prompts over the context,
``max_tokens`` < 1, ...), 404 (unknown model or route), 405, or 500 (``type``
``"server_error"``).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import dataclasses
import errno
import json
import logging
import math
import os
import queue
import secrets
import socket
import threading
import time
import uuid
from collections.abc import Sequence
from typing import Any

from ipo_jax.checkpoint.init import tokenizer_dir_for
from ipo_jax.data.tokenizer import encode_text, load_tokenizer
from ipo_jax.rollout.local import load_sampler
from ipo_jax.sampling import SamplingConfig, row_seed
from ipo_jax.sharding import make_mesh
from ipo_jax.validation import model_spec

logger = logging.getLogger(__name__)

SEED_LIMIT = 1 << 31  # the sampler's row seeds are 31-bit (ipo_jax.sampling.row_seed)
MAX_CHOICES = 128
MAX_ROWS = 4096  # prompts x n in one request
MAX_STOP_STRINGS = 8
DEFAULT_MAX_TOKENS = 16  # OpenAI's default for /v1/completions
ACCEPTED_FIELDS = ("model", "prompt", "max_tokens", "temperature", "top_p", "top_k", "n", "stop", "seed",
                   "return_token_ids", "stream", "echo", "logprobs", "presence_penalty", "frequency_penalty",
                   "best_of", "user")


class RequestError(ValueError):
    """A request the server refuses: HTTP `status` with an OpenAI-style error body."""

    def __init__(self, message: str, param: str | None = None, *, status: int = 400, code: str | None = None):
        super().__init__(message)
        self.message, self.param, self.status, self.code = message, param, status, code


def error_body(message: str, param: str | None = None, *, kind: str = "invalid_request_error",
               code: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


# --------------------------------------------------------------------------- the served model


@dataclasses.dataclass
class ServedModel:
    """The sampler and what requests are checked against."""

    sampler: Any
    tokenizer: Any
    name: str
    max_prompt_tokens: int  # the sampler's largest prompt bucket
    context: int  # the model's max_position_embeddings: prompt + max_tokens must fit
    vocab_size: int

    def encode(self, text: str) -> list[int]:
        return encode_text(self.tokenizer, text)

    def decode(self, ids: Sequence[int]) -> str:
        return self.tokenizer.decode(list(ids), skip_special_tokens=True, clean_up_tokenization_spaces=False)


def load_served_model(model: str, *, tokenizer: str = "", name: str = "", mesh: str | None = None,
                      batch_size: int = 8, max_prompt_length: int = 4096, chunk_tokens: int = 32,
                      param_dtype: str = "float32", dtype: str = "float32") -> ServedModel:
    """Load `model` (``hf:DIR`` / ``orbax:DIR`` / ``preset:NAME``) and its tokenizer (`tokenizer`,
    or the ``hf:`` directory's own) into a sampler (`ipo_jax.rollout.load_sampler`, as the
    pipeline's policy); ValueError for a bad spec before anything loads."""
    mesh_shape = check_served_settings(model, tokenizer=tokenizer, mesh=mesh, batch_size=batch_size,
                                       max_prompt_length=max_prompt_length, chunk_tokens=chunk_tokens)
    tokenizer_dir = tokenizer_dir_for(tokenizer, model)
    tok = load_tokenizer(tokenizer_dir)
    device_mesh = make_mesh(mesh_shape) if mesh_shape else None
    # the sampler decodes its rows: stop strings need it, and a choice's text is its decode
    sampler = load_sampler(model, tok, mesh=device_mesh, param_dtype=param_dtype, dtype=dtype, batch_size=batch_size,
                           max_prompt_length=max_prompt_length, chunk_tokens=chunk_tokens, decodes_text=True)
    return ServedModel(sampler, tok, name or model, max(sampler.buckets), sampler.cfg.max_position_embeddings,
                       sampler.cfg.vocab_size)


def check_served_settings(model: str, *, tokenizer: str = "", mesh: str | None = None, batch_size: int = 8,
                          max_prompt_length: int = 4096, chunk_tokens: int = 32) -> dict[str, int] | None:
    """ValueError for a bad setting, before anything is bound or loaded; returns the mesh shape."""
    expected = model_spec(model)
    if expected:
        raise ValueError(f"--model {model!r}: expected {expected}")
    if tokenizer and not os.path.isdir(tokenizer):
        raise ValueError(f"--tokenizer {tokenizer!r}: expected an existing tokenizer directory")
    for flag, value in (("--batch-size", batch_size), ("--max-prompt-length", max_prompt_length),
                        ("--chunk-tokens", chunk_tokens)):
        if value < 1:
            raise ValueError(f"{flag} is {value}; expected an integer >= 1")
    mesh_shape = _mesh_shape(mesh) if mesh else None
    tokenizer_dir_for(tokenizer, model)  # ModelSpecError (a ValueError) for a preset without one
    return mesh_shape


def _mesh_shape(text: str) -> dict[str, int]:
    shape = {}
    for part in text.split(","):
        axis, sep, size = part.partition("=")
        try:
            if not sep:
                raise ValueError
            shape[axis.strip()] = int(size)
        except ValueError:
            raise ValueError(f"--mesh {text!r}: expected axis=size pairs such as 'data=-1,tensor=2'") from None
    return shape


# --------------------------------------------------------------------------- requests


@dataclasses.dataclass(frozen=True)
class CompletionRequest:
    """A checked request: its prompts (token ids), choices per prompt, settings and seed."""

    prompts: list[list[int]]
    n: int
    settings: Any  # SamplingConfig (its seed unused: rows carry their own)
    stop: tuple[str, ...]
    seed: int
    return_token_ids: bool

    def row_seeds(self) -> list[int]:
        """Prompt-major: choice j of every prompt samples from `seed` (j = 0) or row_seed(seed, j)."""
        per_choice = [self.seed] + [row_seed(self.seed, j) for j in range(1, self.n)]
        return per_choice * len(self.prompts)


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _number(body: dict, field: str, default: float, ok, expected: str) -> float:
    value = body.get(field)
    if value is None:
        return default
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value) or not ok(value):
        raise RequestError(f"{field} must be {expected}, got {json.dumps(value)}", field)
    return float(value)


def _integer(body: dict, field: str, default: int, ok, expected: str) -> int:
    value = body.get(field)
    if value is None:
        return default
    if not _is_int(value) or not ok(value):
        raise RequestError(f"{field} must be {expected}, got {json.dumps(value)}", field)
    return value


def _prompts(value, served: ServedModel) -> list[list[int]]:
    """The prompt field as token-id lists."""
    expected = "a string, a list of strings, a list of token ids or a list of token-id lists"
    if isinstance(value, str):
        items = [value]
    elif isinstance(value, list) and value and all(_is_int(v) for v in value):
        items = [value]
    elif isinstance(value, list) and value and all(isinstance(v, str) for v in value):
        items = value
    elif isinstance(value, list) and value and all(isinstance(v, list) and all(_is_int(t) for t in v) for v in value):
        items = value
    elif isinstance(value, list) and not value:
        raise RequestError("prompt is an empty list; expected at least one prompt", "prompt")
    else:
        raise RequestError(f"prompt must be {expected}", "prompt")
    prompts = []
    for i, item in enumerate(items):
        where = "prompt" if len(items) == 1 else f"prompt[{i}]"
        ids = served.encode(item) if isinstance(item, str) else list(item)
        if not ids:
            raise RequestError(f"{where} is empty; every prompt needs at least one token", "prompt")
        bad = next((t for t in ids if not 0 <= t < served.vocab_size), None)
        if bad is not None:
            raise RequestError(f"{where} has token id {bad}, outside the model's vocabulary [0, {served.vocab_size})",
                               "prompt")
        if len(ids) > served.max_prompt_tokens:
            raise RequestError(f"{where} has {len(ids)} tokens; this server takes at most {served.max_prompt_tokens} "
                               "(--max-prompt-length)", "prompt")
        prompts.append(ids)
    return prompts


def parse_completion_request(body: Any, served: ServedModel) -> CompletionRequest:
    """Check a ``/v1/completions`` body (module docstring); RequestError names the first problem."""
    if not isinstance(body, dict):
        raise RequestError(f"the request body must be a JSON object, got {type(body).__name__}")
    unknown = sorted(set(body) - set(ACCEPTED_FIELDS))
    if unknown:
        raise RequestError(f"unknown field{'s' if len(unknown) > 1 else ''} {', '.join(map(repr, unknown))}; "
                           f"this server accepts {', '.join(ACCEPTED_FIELDS)}", unknown[0])
    model = body.get("model")
    if model is not None and model != served.name:
        if not isinstance(model, str):
            raise RequestError(f"model must be a string, got {json.dumps(model)}", "model")
        raise RequestError(f"the model {model!r} does not exist; this server serves {served.name!r}", "model",
                           status=404, code="model_not_found")
    if "prompt" not in body:
        raise RequestError("prompt is required", "prompt")
    prompts = _prompts(body["prompt"], served)
    max_tokens = _integer(body, "max_tokens", DEFAULT_MAX_TOKENS, lambda v: v >= 1, "an integer >= 1")
    temperature = _number(body, "temperature", 1.0, lambda v: v >= 0, "a number >= 0")
    top_p = _number(body, "top_p", 1.0, lambda v: 0 < v <= 1, "a number in (0, 1]")
    top_k = _integer(body, "top_k", 0, lambda v: v >= -1, "an integer >= 1, or 0 / -1 for no top-k")
    n = _integer(body, "n", 1, lambda v: 1 <= v <= MAX_CHOICES, f"an integer in [1, {MAX_CHOICES}]")
    seed = _integer(body, "seed", -1, lambda v: 0 <= v < SEED_LIMIT, f"an integer in [0, {SEED_LIMIT})")
    if seed < 0:
        seed = secrets.randbelow(SEED_LIMIT)
    stop = body.get("stop")
    if stop is None:
        stop = ()
    elif isinstance(stop, str) and stop:
        stop = (stop,)
    elif (isinstance(stop, list) and len(stop) <= MAX_STOP_STRINGS and all(isinstance(s, str) and s for s in stop)):
        stop = tuple(stop)
    else:
        raise RequestError(f"stop must be a non-empty string or a list of at most {MAX_STOP_STRINGS} non-empty strings",
                           "stop")
    return_ids = body.get("return_token_ids")
    if return_ids is not None and not isinstance(return_ids, bool):
        raise RequestError(f"return_token_ids must be true or false, got {json.dumps(return_ids)}", "return_token_ids")
    unsupported = {  # accepted at their defaults only: (is the value the default?, what is accepted)
        "stream": (lambda v: v is None or v is False, "false"),
        "echo": (lambda v: v is None or v is False, "false"),
        "logprobs": (lambda v: v is None, "null"),
        "presence_penalty": (lambda v: v is None or (isinstance(v, (int, float)) and not isinstance(v, bool) and v == 0), "0"),
        "frequency_penalty": (lambda v: v is None or (isinstance(v, (int, float)) and not isinstance(v, bool) and v == 0), "0"),
        "best_of": (lambda v: v is None or (_is_int(v) and v == n), "null or n"),
    }
    for field, (is_default, shown) in unsupported.items():
        if field in body and not is_default(body[field]):
            raise RequestError(f"{field} {json.dumps(body[field])} is not supported by this server (only {shown})", field)
    user = body.get("user")
    if user is not None and not isinstance(user, str):
        raise RequestError(f"user must be a string, got {json.dumps(user)}", "user")
    if len(prompts) * n > MAX_ROWS:
        raise RequestError(f"{len(prompts)} prompts x n={n} is {len(prompts) * n} rows; at most {MAX_ROWS} per request",
                           "n" if n > 1 else "prompt")
    longest = max(len(p) for p in prompts)
    if longest + max_tokens > served.context:
        raise RequestError(f"prompt ({longest} tokens) + max_tokens ({max_tokens}) is more than the model's context "
                           f"of {served.context} tokens", "max_tokens")
    settings = SamplingConfig(temperature=temperature, top_p=top_p, top_k=max(top_k, 0), max_new_tokens=max_tokens)
    return CompletionRequest(prompts, n, settings, stop, seed, bool(return_ids))


# --------------------------------------------------------------------------- the sampler's worker


@dataclasses.dataclass
class _Job:
    request: CompletionRequest
    future: concurrent.futures.Future


class CompletionEngine:
    """The one thread that calls the sampler: jobs queue up and those waiting together with the
    same settings run as one ``generate`` call (module docstring)."""

    def __init__(self, served: ServedModel):
        self.served = served
        self._queue: queue.Queue[_Job | None] = queue.Queue()
        self._thread = threading.Thread(target=self._run, name="ipo-jax-serve-sampler", daemon=True)
        self._thread.start()

    def submit(self, request: CompletionRequest) -> concurrent.futures.Future:
        future: concurrent.futures.Future = concurrent.futures.Future()
        self._queue.put(_Job(request, future))
        return future

    def close(self) -> None:
        self._queue.put(None)
        self._thread.join(timeout=60)

    def _run(self) -> None:
        while True:
            job = self._queue.get()
            if job is None:
                return
            jobs, closing = [job], False
            while True:  # everything already waiting joins this round
                try:
                    more = self._queue.get_nowait()
                except queue.Empty:
                    break
                if more is None:
                    closing = True
                    break
                jobs.append(more)
            groups: dict[Any, list[_Job]] = {}
            for j in jobs:
                groups.setdefault((j.request.settings, j.request.stop), []).append(j)
            for (settings, stop), group in groups.items():
                self._generate(settings, stop, [j for j in group if j.future.set_running_or_notify_cancel()])
            if closing:
                return

    def _generate(self, settings, stop: tuple[str, ...], jobs: list[_Job]) -> None:
        if not jobs:
            return
        prompts, seeds = [], []
        for job in jobs:
            prompts += [p for p in job.request.prompts for _ in range(job.request.n)]
            seeds += job.request.row_seeds()
        try:
            generations = self.served.sampler.generate(prompts, settings, stop_strings=stop, row_seeds=seeds)
        except Exception as e:  # noqa: BLE001 - the requests of this call fail; the server goes on
            logger.exception("generation failed")
            for job in jobs:
                job.future.set_exception(e)
            return
        start = 0
        for job in jobs:
            rows = len(job.request.prompts) * job.request.n
            job.future.set_result(generations[start : start + rows])
            start += rows


# --------------------------------------------------------------------------- the app


def _error(status: int, message: str, param: str | None = None, *, kind: str = "invalid_request_error",
           code: str | None = None):
    from starlette.responses import JSONResponse

    return JSONResponse(error_body(message, param, kind=kind, code=code), status_code=status)


def _choice_text(served: ServedModel, tokens: Sequence[int], stop: tuple[str, ...]) -> str:
    text = served.decode(tokens)
    cuts = [text.find(s) for s in stop if s in text]
    return text[: min(cuts)] if cuts else text


def create_app(served: ServedModel, engine: CompletionEngine):
    """The starlette app of the module docstring's routes."""
    from starlette.applications import Starlette
    from starlette.exceptions import HTTPException
    from starlette.requests import Request
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    created = int(time.time())

    async def completions(request: Request):
        raw = await request.body()
        try:
            body = json.loads(raw)
        except (UnicodeDecodeError, ValueError) as e:
            return _error(400, f"the request body is not valid JSON ({e})")
        try:
            parsed = parse_completion_request(body, served)
        except RequestError as e:
            return _error(e.status, e.message, e.param, code=e.code)
        try:
            generations = await asyncio.wrap_future(engine.submit(parsed))
        except Exception as e:  # noqa: BLE001 - the sampler failed on this request's call
            return _error(500, f"generation failed ({type(e).__name__}: {e})", kind="server_error")
        choices, completion_tokens = [], 0
        for k, generation in enumerate(generations):
            ids = list(generation.completion_ids)
            completion_tokens += len(ids)
            choice = {"index": k, "text": _choice_text(served, generation.tokens, parsed.stop), "logprobs": None,
                      "finish_reason": generation.finish_reason}
            if parsed.return_token_ids:
                choice["token_ids"] = ids
                choice["prompt_token_ids"] = parsed.prompts[k // parsed.n]
            choices.append(choice)
        prompt_tokens = sum(len(p) for p in parsed.prompts)
        return JSONResponse({
            "id": f"cmpl-{uuid.uuid4().hex}", "object": "text_completion", "created": int(time.time()),
            "model": served.name, "choices": choices,
            "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                      "total_tokens": prompt_tokens + completion_tokens},
        })

    async def models(request: Request):
        return JSONResponse({"object": "list", "data": [
            {"id": served.name, "object": "model", "created": created, "owned_by": "ipo-jax",
             "max_model_len": served.context, "max_prompt_tokens": served.max_prompt_tokens}]})

    async def health(request: Request):
        return JSONResponse({"status": "ok"})

    async def http_error(request: Request, exc: HTTPException):
        return _error(exc.status_code, f"{request.method} {request.url.path}: {exc.detail}")

    return Starlette(
        routes=[Route("/v1/completions", completions, methods=["POST"]), Route("/v1/models", models, methods=["GET"]),
                Route("/health", health, methods=["GET"])],
        exception_handlers={HTTPException: http_error},
    )


def bind(host: str, port: int, *, listen: bool = True) -> socket.socket:
    """A TCP socket bound to (host, port), listening unless `listen` is False; port 0 picks a free
    one. A host that does not resolve, is not this machine's, or a port in use: ValueError."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM,
                                                             flags=socket.AI_PASSIVE)[0]
    except (socket.gaierror, UnicodeError) as e:
        raise ValueError(f"--host {host!r}: cannot resolve it ({getattr(e, 'strerror', None) or e})") from None
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(address)
    except OSError as e:
        sock.close()
        raise _listen_error(host, port, e) from None
    if listen:
        start_listening(sock, host, port)
    sock.set_inheritable(True)
    return sock


def start_listening(sock: socket.socket, host: str, port: int) -> None:
    try:
        sock.listen(128)
    except OSError as e:  # another process bound the same port meanwhile and listened first
        sock.close()
        raise _listen_error(host, port, e) from None


def _listen_error(host: str, port: int, e: OSError) -> ValueError:
    hint = {errno.EADDRINUSE: " (another process listens there; pick another --port, or 0 for any free one)",
            errno.EADDRNOTAVAIL: " (not an address of this machine)",
            errno.EACCES: " (ports below 1024 need privileges)"}.get(e.errno, "")
    return ValueError(f"cannot listen on {host}:{port}: {e.strerror or e}{hint}")


def make_server(served: ServedModel, sock: socket.socket, *, log_level: str = "warning"):
    """(uvicorn.Server, CompletionEngine) for `served` on the bound `sock`: run it with
    ``server.run(sockets=[sock])``; stop it with ``server.should_exit = True`` then ``engine.close()``."""
    import uvicorn

    engine = CompletionEngine(served)
    config = uvicorn.Config(create_app(served, engine), log_level=log_level, access_log=False, lifespan="off")
    return uvicorn.Server(config), engine


def run_serve(args) -> int:
    """The CLI stage: check the settings and bind the address, load, listen, serve until interrupted."""
    if not 0 <= args.port <= 65535:
        raise ValueError(f"--port {args.port}: expected 0..65535 (0 = any free port)")
    check_served_settings(args.model, tokenizer=args.tokenizer or "", mesh=args.mesh, batch_size=args.batch_size,
                          max_prompt_length=args.max_prompt_length, chunk_tokens=args.chunk_tokens)
    # Bound before the model loads, so a busy port or a bad host fails in a second, not after the
    # load; clients are refused (not left waiting) until it listens.
    sock = bind(args.host, args.port, listen=False)
    try:
        served = load_served_model(args.model, tokenizer=args.tokenizer or "", name=args.served_model_name or "",
                                   mesh=args.mesh, batch_size=args.batch_size, max_prompt_length=args.max_prompt_length,
                                   chunk_tokens=args.chunk_tokens, param_dtype=args.param_dtype, dtype=args.dtype)
    except BaseException:
        sock.close()
        raise
    start_listening(sock, args.host, args.port)
    host, port = sock.getsockname()[:2]
    server, engine = make_server(served, sock, log_level="info" if args.verbose else "warning")
    shown = f"[{host}]" if ":" in host else host
    if host not in ("127.0.0.1", "::1") and not host.startswith("127."):
        logger.warning(f"listening on {host}, beyond this machine; the server has no authentication")
    logger.info(f"serving {served.name!r} on http://{shown}:{port}/v1 (POST /v1/completions, GET /v1/models, "
                f"GET /health); prompts up to {served.max_prompt_tokens} tokens, context {served.context}")
    try:
        server.run(sockets=[sock])
    finally:
        engine.close()
        sock.close()
    return 0


__all__ = ["CompletionEngine", "CompletionRequest", "RequestError", "ServedModel", "bind", "check_served_settings",
           "create_app", "load_served_model", "make_server", "parse_completion_request", "run_serve"]
