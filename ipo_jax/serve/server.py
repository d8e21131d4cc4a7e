"""Running `ipo-jax serve`: the listening socket (`bind`, bound before the model loads), the
uvicorn server with its slow-client limits (`make_server`), the API key and limits the CLI
stage (`ipo_jax.serve.run_serve`) takes from its flags.

Slow clients: a connection must send a request's headers within ``read_timeout`` seconds of
opening (or of its previous response), else it is closed (uvicorn itself only times out idle
keep-alive connections); the body then has the same time per read (`ipo_jax.serve.app.read_json`,
a JSON 408); idle keep-alive connections close after ``--timeout-keep-alive`` seconds; at most
``--max-connections`` connections are open at once (uvicorn answers more with a 503).
"""

from __future__ import annotations

import errno
import os
import socket

from ipo_jax.serve.app import Limits, create_app
from ipo_jax.serve.engine import Engine

API_KEY_ENVS = ("IPO_JAX_API_KEY", "VLLM_API_KEY")


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


def _timed_protocol(read_timeout: float):
    """uvicorn's h11 protocol with a deadline for each request's headers (module docstring)."""
    from uvicorn.protocols.http.h11_impl import H11Protocol

    class TimedH11Protocol(H11Protocol):
        _deadline = None

        def _arm(self) -> None:
            self._disarm()
            self._deadline = self.loop.call_later(read_timeout, self._too_slow)

        def _disarm(self) -> None:
            if self._deadline is not None:
                self._deadline.cancel()
                self._deadline = None

        def _too_slow(self) -> None:
            self._deadline = None  # no request's headers came in time (they disarm it)
            if self.cycle is None or self.cycle.response_complete:
                self.transport.close()

        def connection_made(self, transport) -> None:
            super().connection_made(transport)
            self._arm()

        def data_received(self, data: bytes) -> None:
            super().data_received(data)
            if self.cycle is not None and not self.cycle.response_complete:
                self._disarm()  # the headers are in: the app times the body's reads

        def on_response_complete(self) -> None:
            super().on_response_complete()
            if not self.transport.is_closing():
                self._arm()

        def connection_lost(self, exc) -> None:
            self._disarm()
            super().connection_lost(exc)

    return TimedH11Protocol


def make_server(served, sock: socket.socket, *, log_level: str = "warning", limits: Limits | None = None,
                timeout_keep_alive: int = 5, max_connections: int | None = 256):
    """(uvicorn.Server, Engine) for `served` on the bound `sock`: run it with
    ``server.run(sockets=[sock])``; stop it with ``server.should_exit = True`` then ``engine.close()``."""
    import uvicorn

    class Server(uvicorn.Server):
        """uvicorn's server, remembering the signals that stopped it: uvicorn re-raises a caught
        SIGINT after its shutdown under the handler it found, which does nothing when the process
        started with SIGINT ignored (a background job of a non-interactive shell), so `run_serve`
        checks `signals` itself."""

        signals: list[int]

        def handle_exit(self, sig, frame) -> None:
            self.signals.append(sig)
            super().handle_exit(sig, frame)

    limits = limits or Limits()
    engine = Engine(served)
    config = uvicorn.Config(create_app(served, engine, limits), log_level=log_level, access_log=False, lifespan="off",
                            http=_timed_protocol(limits.read_timeout), timeout_keep_alive=timeout_keep_alive,
                            limit_concurrency=max_connections)
    server = Server(config)
    server.signals = []
    return server, engine


def api_key_of(args) -> str | None:
    """--api-key, else the first of IPO_JAX_API_KEY / VLLM_API_KEY that is set (non-empty)."""
    if args.api_key:
        return args.api_key
    return next((os.environ[name] for name in API_KEY_ENVS if os.environ.get(name)), None)


def limits_of(args) -> Limits:
    """The `Limits` of the CLI flags; ValueError for one out of range."""
    for flag, value, low in (("--max-request-bytes", args.max_request_bytes, 1024), ("--read-timeout", args.read_timeout, 0.001),
                             ("--timeout-keep-alive", args.timeout_keep_alive, 1), ("--max-connections", args.max_connections, 1)):
        if value < low:
            raise ValueError(f"{flag} is {value}; expected at least {low}")
    return Limits(args.max_request_bytes, args.read_timeout, api_key_of(args))
