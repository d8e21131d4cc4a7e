"""`ipo-jax serve`: our JAX sampler behind an OpenAI-compatible server (starlette + uvicorn), so
the HTTP policy backend (`ipo_jax.rollout.http.HttpPolicy`), the HTTP judge and cue detector
(`ipo_jax.judging.chat.HttpChat`) -- or any OpenAI client -- can use a local checkpoint.

Routes (loopback by default):
  * ``POST /v1/completions`` -- an OpenAI ``text_completion`` object: ``choices[k]`` =
    ``{index, text, finish_reason ("stop" | "length"), logprobs}`` plus ``token_ids`` and
    ``prompt_token_ids`` when ``return_token_ids`` is true, ordered prompt-major (``k = i * n +
    j`` for prompt i, choice j); ``usage`` counts each prompt's tokens once and every choice's
    sampled ids.
  * ``POST /v1/chat/completions`` -- ``messages`` rendered by the tokenizer's chat template with
    its generation prompt; a ``chat.completion`` whose ``choices[k].message`` has ``content`` and
    ``reasoning_content`` (a reasoning model's ``<think>`` part, `ipo_jax.serve.reasoning`,
    ``--reasoning-parser``).
  * ``GET /v1/models`` -- one entry per served name (``--served-model-name``, by default the
    ``--model`` spec) with ``max_model_len`` (prompt + max_tokens must fit it) and
    ``max_prompt_tokens`` (the longest prompt taken, below ``max_model_len``).
  * ``GET /health`` -- 200 ``{"status": "ok"}``, the one route served without the API key.
  Any other path is a JSON 404 listing these routes.

Request fields (anything else is an HTTP 400 naming the field):
  * completions: ``prompt`` (required): a string, a list of strings, a list of token ids, or a
    list of token-id lists; strings are tokenised without special tokens added (the pipeline's
    ``encode_text``).  ``logprobs`` (int 0..20): per token its log-probability and the top
    ``logprobs`` alternatives (``tokens``, ``token_logprobs``, ``top_logprobs``,
    ``text_offset``).  ``echo`` (false only), ``best_of`` (null or n).
  * chat: ``messages`` (required; ``content`` a string or text parts), ``max_completion_tokens``
    (an alias of ``max_tokens``, whose default here is the rest of the context, at most 2048),
    ``logprobs`` (bool) and ``top_logprobs`` (0..20), ``chat_template_kwargs`` (an object
    passed to the template, e.g. ``{"enable_thinking": false}``).
  * both: ``model`` (one of the served names, else HTTP 404 ``model_not_found``), ``max_tokens``
    (int >= 1; completions' default 16), ``temperature`` (>= 0, default 1; 0 = greedy),
    ``top_p`` (in (0, 1], default 1), ``top_k`` (0 or -1 = off), ``n`` (1..128 choices per
    prompt; at most 4096 prompts x n per request), ``stop`` (a string or up to 8 non-empty
    strings: the row ends once its text contains one; the text is cut before it, the ids keep
    the token that completed it), ``seed`` (int in [0, 2**31)), ``return_token_ids`` (bool),
    ``stream`` (bool: server-sent events ``data: {chunk}``, then ``data: [DONE]``),
    ``stream_options.include_usage`` (a last chunk with ``usage``), ``presence_penalty`` /
    ``frequency_penalty`` (0 only), ``user`` (ignored).
  Each prompt must be non-empty and at most ``max_prompt_tokens`` tokens (a text is first
  checked in characters, before it is tokenised), ids must lie in the model's vocabulary.

Log-probabilities are the model's raw ones (log-softmax of its logits, before temperature /
top-p; vLLM's default), computed by one scoring pass over prompt + completion
(`ServedModel.score`).

Seeds.  Choice j of every prompt of a request samples from its own key stream: choice 0 from
``PRNGKey(seed)``, choice j > 0 from ``PRNGKey(row_seed(seed, j))`` (`ipo_jax.sampling.row_seed`).
Every prompt of a list gets the same seeds (as in vLLM).  The sampler's rows are independent
of their batch, so a one-prompt request with seed ``row_seed(seed, r)`` -- what the HTTP policy
sends for row r -- samples the tokens the in-process policy samples for row r.  Without
``seed`` the server draws one at random.

Scheduling (`ipo_jax.serve.engine`): continuous batching across requests; a new request's rows
join the decode batch at the next chunk boundary (``--admit-tokens`` steps apart while the batch
has free rows, ``--chunk-tokens`` once it is full), and a request whose client disconnects
leaves it there.

Security and limits (`ipo_jax.serve.app`, `ipo_jax.serve.server`): ``--api-key`` (or
``IPO_JAX_API_KEY`` / ``VLLM_API_KEY``) makes every route but ``/health`` need ``Authorization:
Bearer <key>`` (a JSON 401 otherwise); a body over ``--max-request-bytes`` is a 413 (from
Content-Length, before reading); headers and each body read must arrive within
``--read-timeout``; malformed JSON (nested too deep included) is a JSON 400.

Errors are JSON: ``{"error": {"message", "type", "param", "code"}}`` with HTTP 400, 401, 404,
405, 408, 413 or 500 (``type`` ``"server_error"``).

Modules: ``model`` (the served model, loading, scoring), ``requests`` (fields),
``reasoning`` (``<think>`` splitting), ``engine`` (the sampler's worker), ``app`` (HTTP),
``server`` (sockets, uvicorn, the flags' limits); `run_serve`, the CLI stage, is here.
"""

import logging
import signal

from ipo_jax.serve.app import Limits, create_app
from ipo_jax.serve.engine import Engine
from ipo_jax.serve.model import ServedModel, check_served_settings, load_served_model
from ipo_jax.serve.requests import GenerationRequest, RequestError, parse_chat_request, parse_completion_request
from ipo_jax.serve.server import bind, limits_of, make_server, start_listening

logger = logging.getLogger(__name__)


def run_serve(args) -> int:
    """The CLI stage: check the settings and bind the address, load, listen, serve until interrupted."""
    if not 0 <= args.port <= 65535:
        raise ValueError(f"--port {args.port}: expected 0..65535 (0 = any free port)")
    check_served_settings(args.model, tokenizer=args.tokenizer or "", mesh=args.mesh, batch_size=args.batch_size,
                          max_prompt_length=args.max_prompt_length, chunk_tokens=args.chunk_tokens,
                          max_model_len=args.max_model_len, reasoning_parser=args.reasoning_parser,
                          admit_tokens=args.admit_tokens)
    limits = limits_of(args)
    # Bound before the model loads, so a busy port or a bad host fails in a second, not after the
    # load; clients are refused (not left waiting) until it listens.
    sock = bind(args.host, args.port, listen=False)
    try:
        served = load_served_model(args.model, tokenizer=args.tokenizer or "", name=args.served_model_name or [],
                                   mesh=args.mesh, batch_size=args.batch_size, max_prompt_length=args.max_prompt_length,
                                   chunk_tokens=args.chunk_tokens, param_dtype=args.param_dtype, dtype=args.dtype,
                                   max_model_len=args.max_model_len, reasoning_parser=args.reasoning_parser,
                                   admit_tokens=args.admit_tokens)
    except BaseException:
        sock.close()
        raise
    start_listening(sock, args.host, args.port)
    host, port = sock.getsockname()[:2]
    server, engine = make_server(served, sock, log_level="info" if args.verbose else "warning", limits=limits,
                                 timeout_keep_alive=args.timeout_keep_alive, max_connections=args.max_connections)
    shown = f"[{host}]" if ":" in host else host
    if host not in ("127.0.0.1", "::1") and not host.startswith("127.") and not limits.api_key:
        logger.warning(f"listening on {host}, beyond this machine; the server has no authentication (--api-key)")
    names = ", ".join(map(repr, served.names))
    logger.info(f"serving {names} on http://{shown}:{port}/v1 (POST /v1/completions, POST /v1/chat/completions, "
                f"GET /v1/models, GET /health); prompts up to {served.max_prompt_tokens} tokens, "
                f"max_model_len {served.context}{'; API key required' if limits.api_key else ''}")
    try:
        server.run(sockets=[sock])
    finally:
        engine.close()
        sock.close()
    if signal.SIGINT in server.signals:
        raise KeyboardInterrupt  # Ctrl-C ends every stage the same way: "interrupted", exit code 130
    return 0


__all__ = ["Engine", "GenerationRequest", "Limits", "RequestError", "ServedModel", "bind",
           "check_served_settings", "create_app", "load_served_model", "make_server", "parse_chat_request",
           "parse_completion_request", "run_serve"]
