"""The HTTP side of `ipo-jax serve`: the starlette app (routes, JSON errors, the Bearer key gate,
the request body limit and read timeout) and the OpenAI response bodies -- whole or streamed as
server-sent events -- built from the engine's generations (package docstring).

Parsing (tokenising, the chat template) and scoring (``logprobs``) run on worker threads, so
``/health`` and the other requests are served meanwhile; a request whose client disconnects
is cancelled in the engine (its rows leave the batch at the next chunk boundary).
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import secrets
import time
import uuid
from typing import Any, Callable

from ipo_jax.sampling import Generation
from ipo_jax.serve.engine import Engine, Job
from ipo_jax.serve.model import ServedModel
from ipo_jax.serve.reasoning import ReasoningStream, held_tail, resolve_parser, split_reasoning
from ipo_jax.serve.requests import (
    GenerationRequest,
    RequestError,
    error_body,
    parse_chat_request,
    parse_completion_request,
)

ROUTES = (("POST", "/v1/completions"), ("POST", "/v1/chat/completions"), ("GET", "/v1/models"), ("GET", "/health"))
OPEN_PATHS = ("/health",)  # served without the key


@dataclasses.dataclass(frozen=True)
class Limits:
    """What a client may send: the body size (checked against Content-Length, then while reading)
    and the time it may take to send it; `api_key`: the Bearer key every route but /health needs."""

    max_request_bytes: int = 4 << 20
    read_timeout: float = 30.0
    api_key: str | None = None


def _error(status: int, message: str, param: str | None = None, *, kind: str = "invalid_request_error",
           code: str | None = None, headers: dict | None = None):
    from starlette.responses import JSONResponse

    return JSONResponse(error_body(message, param, kind=kind, code=code), status_code=status, headers=headers)


def routes_text() -> str:
    return ", ".join(f"{m} {p}" for m, p in ROUTES)


class KeyGate:
    """ASGI wrapper: every HTTP request but `OPEN_PATHS` needs ``Authorization: Bearer <key>``;
    others get a JSON 401 before anything is read."""

    def __init__(self, app, key: str):
        self.app, self.key = app, f"Bearer {key}".encode()

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http" and scope["path"] not in OPEN_PATHS:
            given = dict(scope["headers"]).get(b"authorization", b"")
            if not secrets.compare_digest(given, self.key):
                response = _error(401, "a valid API key is required (Authorization: Bearer <key>)",
                                  kind="invalid_request_error", code="invalid_api_key",
                                  headers={"WWW-Authenticate": "Bearer"})
                return await response(scope, receive, send)
        return await self.app(scope, receive, send)


async def read_json(request, limits: Limits) -> Any:
    """The body as JSON: 413 over the limit (from Content-Length before reading, else while
    reading), 408 when the client stalls, 400 when it is not JSON (or nested too deep)."""
    limit = limits.max_request_bytes
    declared = request.headers.get("content-length")
    if declared is not None and (not declared.isdigit() or int(declared) > limit):
        raise RequestError(f"the request body is {declared} bytes; this server takes at most {limit} "
                           "(--max-request-bytes)", status=413, code="request_too_large")
    chunks, size = [], 0
    while True:
        try:
            message = await asyncio.wait_for(request.receive(), limits.read_timeout)
        except asyncio.TimeoutError:
            raise RequestError(f"the request body did not arrive within {limits.read_timeout:g} s", status=408,
                               code="request_timeout") from None
        if message["type"] == "http.disconnect":
            raise RequestError("the client went away", status=400, code="client_disconnected")
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise RequestError(f"the request body is over {limit} bytes (--max-request-bytes)", status=413,
                               code="request_too_large")
        chunks.append(chunk)
        if not message.get("more_body", False):
            break
    try:
        return json.loads(b"".join(chunks))
    except RecursionError:
        raise RequestError("the request body is nested too deeply") from None
    except (UnicodeDecodeError, ValueError) as e:
        raise RequestError(f"the request body is not valid JSON ({e})") from None


async def wait_for_disconnect(receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass


# --------------------------------------------------------------------------- response bodies


def choice_text(served: ServedModel, generation: Generation, stop: tuple[str, ...]) -> str:
    """A choice's text: its tokens decoded, cut before the first stop string."""
    text = served.decode(generation.tokens)
    cuts = [text.find(s) for s in stop if s in text]
    return text[: min(cuts)] if cuts else text


def completion_logprobs(served: ServedModel, ids: list[int], scores, offset: int = 0) -> dict[str, Any]:
    """The ``logprobs`` of a completions choice: tokens, token_logprobs, top_logprobs, text_offset."""
    tokens = [served.token_text(t) for t in ids]
    offsets, at = [], offset
    for token in tokens:
        offsets.append(at)
        at += len(token)
    tops = []
    for token, lp, top_ids, top_lps in zip(tokens, scores.logprobs, scores.top_ids, scores.top_logprobs):
        top = {served.token_text(i): v for i, v in zip(top_ids, top_lps)}
        top.setdefault(token, lp)
        tops.append(top)
    return {"tokens": tokens, "token_logprobs": scores.logprobs, "top_logprobs": tops, "text_offset": offsets}


def chat_logprobs(served: ServedModel, ids: list[int], scores) -> dict[str, Any]:
    """The ``logprobs`` of a chat choice: ``content``, one entry per token with its top alternatives."""

    def entry(token_id: int, logprob: float) -> dict[str, Any]:
        text = served.token_text(token_id)
        return {"token": text, "logprob": logprob, "bytes": list(text.encode("utf-8"))}

    content = []
    for t, lp, top_ids, top_lps in zip(ids, scores.logprobs, scores.top_ids, scores.top_logprobs):
        content.append({**entry(t, lp), "top_logprobs": [entry(i, v) for i, v in zip(top_ids, top_lps)]})
    return {"content": content}


def usage(parsed: GenerationRequest, completion_tokens: int) -> dict[str, int]:
    prompt_tokens = sum(len(p) for p in parsed.prompts)
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}


async def _scores(served: ServedModel, parsed: GenerationRequest, k: int, ids: list[int]):
    return await asyncio.to_thread(served.score, parsed.prompts[k // parsed.n], ids, parsed.logprobs)


async def whole_response(served: ServedModel, parsed: GenerationRequest, generations: list[Generation]) -> dict:
    """The non-streamed body of a completions or chat request."""
    choices, completion_tokens = [], 0
    for k, generation in enumerate(generations):
        ids = generation.completion_ids
        completion_tokens += len(ids)
        text = choice_text(served, generation, parsed.stop)
        logprobs = None
        if parsed.logprobs is not None:
            scores = await _scores(served, parsed, k, ids)
            logprobs = (chat_logprobs if parsed.chat else completion_logprobs)(served, ids, scores)
        if parsed.chat:
            parser = resolve_parser(served.reasoning_parser, served.thinks, parsed.opened, text)
            reasoning, content = split_reasoning(text, parser)
            choice = {"index": k, "message": {"role": "assistant", "content": content, "reasoning_content": reasoning},
                      "logprobs": logprobs, "finish_reason": generation.finish_reason}
        else:
            choice = {"index": k, "text": text, "logprobs": logprobs, "finish_reason": generation.finish_reason}
        if parsed.return_token_ids:
            choice["token_ids"] = ids
            choice["prompt_token_ids"] = parsed.prompts[k // parsed.n]
        choices.append(choice)
    kind = "chat.completion" if parsed.chat else "text_completion"
    return {"id": f"{'chatcmpl' if parsed.chat else 'cmpl'}-{uuid.uuid4().hex}", "object": kind,
            "created": int(time.time()), "model": served.name, "choices": choices,
            "usage": usage(parsed, completion_tokens)}


# --------------------------------------------------------------------------- streaming


class ChoiceStream:
    """What one streamed choice has sent: text (or reasoning / content) and ids."""

    def __init__(self, served: ServedModel, parsed: GenerationRequest):
        self.served, self.parsed, self.ids_sent, self.text_sent = served, parsed, 0, ""
        self.reasoning = ReasoningStream(served.reasoning_parser, served.thinks, parsed.opened) if parsed.chat else None

    def text_delta(self, ids: list[int], generation: Generation | None) -> tuple[str, str]:
        """(reasoning delta, text / content delta) from the ids so far, holding back a possible
        incomplete character or stop string until the row ends."""
        if generation is not None:
            text = choice_text(self.served, generation, self.parsed.stop)
            if self.reasoning is not None:
                return self.reasoning.finish(text)
        else:
            text = self.served.decode(ids).rstrip("\ufffd")
            text = text[: len(text) - held_tail(text, self.parsed.stop)]
            if self.reasoning is not None:
                return self.reasoning.update(text)
        delta = text[len(self.text_sent):] if text.startswith(self.text_sent) else ""
        self.text_sent += delta
        return "", delta


class EventStream:
    """The server-sent events of one streamed request (OpenAI's chunk objects, then ``[DONE]``)."""

    def __init__(self, served: ServedModel, engine: Engine, parsed: GenerationRequest, receive):
        self.served, self.engine, self.parsed, self.receive = served, engine, parsed, receive
        self.id = f"{'chatcmpl' if parsed.chat else 'cmpl'}-{uuid.uuid4().hex}"
        self.created = int(time.time())
        self.choices = [ChoiceStream(served, parsed) for _ in range(parsed.rows)]

    def event(self, choices: list[dict], usage_body: dict | None = None) -> str:
        body = {"id": self.id, "object": "chat.completion.chunk" if self.parsed.chat else "text_completion",
                "created": self.created, "model": self.served.name, "choices": choices}
        if self.parsed.include_usage:
            body["usage"] = usage_body
        return f"data: {json.dumps(body)}\n\n"

    async def choice_events(self, k: int, ids: list[int], generation: Generation | None) -> list[dict]:
        stream = self.choices[k]
        reasoning, text = stream.text_delta(ids, generation)
        new_ids = ids[stream.ids_sent:] if generation is None else generation.completion_ids[stream.ids_sent:]
        if not (reasoning or text or new_ids or generation):
            return []
        logprobs = None
        if self.parsed.logprobs is not None and new_ids:
            scores = await _scores(self.served, self.parsed, k, ids[: stream.ids_sent + len(new_ids)])
            part = dataclasses.replace(scores, logprobs=scores.logprobs[stream.ids_sent:],
                                       top_ids=scores.top_ids[stream.ids_sent:],
                                       top_logprobs=scores.top_logprobs[stream.ids_sent:])
            logprobs = (chat_logprobs(self.served, new_ids, part) if self.parsed.chat else
                        completion_logprobs(self.served, new_ids, part, len(stream.text_sent) - len(text)))
        stream.ids_sent += len(new_ids)
        finish = generation.finish_reason if generation is not None else None
        if self.parsed.chat:
            delta = {}
            if reasoning:
                delta["reasoning_content"] = reasoning
            if text:
                delta["content"] = text
            choice = {"index": k, "delta": delta, "logprobs": logprobs, "finish_reason": finish}
        else:
            choice = {"index": k, "text": text, "logprobs": logprobs, "finish_reason": finish}
        if self.parsed.return_token_ids:
            choice["token_ids"] = new_ids
        return [choice]

    async def __aiter__(self):
        loop = asyncio.get_running_loop()
        updates: asyncio.Queue = asyncio.Queue()
        job = self.engine.submit(self.parsed, lambda ups: loop.call_soon_threadsafe(updates.put_nowait, ups))
        done = asyncio.wrap_future(job.future)
        left, completion_tokens = self.parsed.rows, 0
        try:
            if self.parsed.chat:
                yield self.event([{"index": k, "delta": {"role": "assistant", "content": ""}, "logprobs": None,
                                   "finish_reason": None} for k in range(self.parsed.rows)])
            while left:
                getter = asyncio.ensure_future(updates.get())
                await asyncio.wait({getter, done}, return_when=asyncio.FIRST_COMPLETED)
                if not getter.done():
                    getter.cancel()
                    if done.exception() is not None:
                        error = done.exception()
                        yield f"data: {json.dumps(error_body(f'generation failed ({type(error).__name__}: {error})', kind='server_error'))}\n\n"
                        break
                    continue
                for k, ids, generation in getter.result():
                    choices = await self.choice_events(k, list(ids), generation)
                    if choices:
                        yield self.event(choices)
                    if generation is not None:
                        left -= 1
                        completion_tokens += len(generation.completion_ids)
            if not left and self.parsed.include_usage:
                yield self.event([], usage(self.parsed, completion_tokens))
            yield "data: [DONE]\n\n"
        finally:
            if left:
                job.cancel()


# --------------------------------------------------------------------------- the app


def create_app(served: ServedModel, engine: Engine, limits: Limits | None = None):
    """The starlette app of the package docstring's routes (behind `KeyGate` with an API key)."""
    from starlette.applications import Starlette
    from starlette.exceptions import HTTPException
    from starlette.requests import Request
    from starlette.responses import JSONResponse, StreamingResponse
    from starlette.routing import Route

    limits = limits or Limits()
    created = int(time.time())

    def generation_route(parse: Callable[[Any, ServedModel], GenerationRequest]):
        async def handler(request: Request):
            try:
                body = await read_json(request, limits)
                parsed = await asyncio.to_thread(parse, body, served)
            except RequestError as e:
                return _error(e.status, e.message, e.param, code=e.code)
            if parsed.stream:
                return StreamingResponse(EventStream(served, engine, parsed, request.receive),
                                         media_type="text/event-stream", headers={"Cache-Control": "no-cache"})
            return await answer(request, parsed)

        return handler

    async def answer(request: Request, parsed: GenerationRequest):
        job: Job = engine.submit(parsed)
        result = asyncio.wrap_future(job.future)
        gone = asyncio.ensure_future(wait_for_disconnect(request.receive))
        await asyncio.wait({result, gone}, return_when=asyncio.FIRST_COMPLETED)
        if not result.done():  # the client went away: its rows leave the batch
            job.cancel()
            return _error(499, "the client closed the request", code="client_disconnected")
        gone.cancel()
        try:
            generations = result.result()
        except Exception as e:  # noqa: BLE001 - the sampler failed on this request's rows
            return _error(500, f"generation failed ({type(e).__name__}: {e})", kind="server_error")
        return JSONResponse(await whole_response(served, parsed, generations))

    async def models(request: Request):
        return JSONResponse({"object": "list", "data": [
            {"id": name, "object": "model", "created": created, "owned_by": "ipo-jax", "root": served.name,
             "max_model_len": served.context, "max_prompt_tokens": served.max_prompt_tokens}
            for name in served.names]})

    async def health(request: Request):
        return JSONResponse({"status": "ok"})

    async def http_error(request: Request, exc: HTTPException):
        where = f"{request.method} {request.url.path}"
        if exc.status_code == 404:
            return _error(404, f"{where}: no such route; this server serves {routes_text()}", code="not_found")
        return _error(exc.status_code, f"{where}: {exc.detail}")

    async def server_error(request: Request, exc: Exception):
        return _error(500, f"internal error ({type(exc).__name__})", kind="server_error")

    app = Starlette(
        routes=[Route("/v1/completions", generation_route(parse_completion_request), methods=["POST"]),
                Route("/v1/chat/completions", generation_route(parse_chat_request), methods=["POST"]),
                Route("/v1/models", models, methods=["GET"]), Route("/health", health, methods=["GET"])],
        exception_handlers={HTTPException: http_error, Exception: server_error},
    )
    return KeyGate(app, limits.api_key) if limits.api_key else app
