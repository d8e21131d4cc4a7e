"""How the command line shows log records: the one logging set-up of ipo-jax (`cli_logging`).

Library modules log through `logging.getLogger(__name__)` and never print; the CLI wraps each
command in `cli_logging(verbose)`:

  default   ipo_jax records at INFO and above; INFO lines go to stdout as plain text (they are
            the stage's report: "pairs: 16 read ...", "resumed from ..."), WARNING and above to
            stderr as "warning: ..." / "error: ...". Third-party records only at WARNING and
            above, one line each (the first line of the message, no traceback); orbax's and
            absl's own logs not at all (QUIET_THIRD_PARTY), and Python warnings (all of them
            third-party: jax, transformers, ...) not at all.
  -v        every logger at DEBUG, Python warnings too, every record to stderr as
            "LEVEL logger.name: message" with its traceback (where each line comes from).

Why orbax, absl and asyncio are quiet: every failure they log (a save on a full disk, a damaged
checkpoint) is also raised to the caller, which reports it in one line of its own; their logs
repeated it with four tracebacks (a full-disk save printed 326 lines), and asyncio then logged
each of orbax's write tasks whose error nobody read ("Task exception was never retrieved", one
traceback per array shard). The stage's one error line is printed by the CLI itself
(ipo_jax/cli.py `error_line`), not through logging.

The streams are looked up when a record is written, so a test's captured sys.stdout / sys.stderr
see the lines, and `cli_logging` restores the previous set-up on exit (a command run in-process
leaves no handler behind).
"""

from __future__ import annotations

import contextlib
import logging
import sys
from typing import Iterator

PACKAGE = "ipo_jax"
QUIET_THIRD_PARTY = ("absl", "orbax", "asyncio")  # their failures reach us as exceptions: see the module doc


def _is_ours(record: logging.LogRecord) -> bool:
    return record.name == PACKAGE or record.name.startswith(PACKAGE + ".")


class _ConsoleHandler(logging.Handler):
    """Not verbose: ipo_jax's INFO to stdout as the bare message, WARNING and above to stderr as
    'warning: ...'; third-party records below WARNING dropped (whatever level their logger was
    given), the others one line ('warning (name): <first line>'); no tracebacks.
    Verbose: every record to stderr as 'LEVEL name: message' with its traceback."""

    def __init__(self, verbose: bool):
        super().__init__(logging.DEBUG)
        self.verbose = verbose
        self._verbose_format = logging.Formatter("%(levelname)s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        if self.verbose:
            return self._verbose_format.format(record)
        message, level = record.getMessage(), record.levelname.lower()
        if not _is_ours(record):
            return f"{level} ({record.name}): {message.strip().partition(chr(10))[0]}"
        return message if record.levelno < logging.WARNING else f"{level}: {message}"

    def emit(self, record: logging.LogRecord) -> None:
        if not self.verbose and not _is_ours(record) and record.levelno < logging.WARNING:
            return
        try:
            stream = sys.stdout if record.levelno < logging.WARNING and not self.verbose else sys.stderr
            stream.write(self.format(record) + "\n")
            stream.flush()
        except BrokenPipeError:
            raise  # the CLI ends quietly on a closed pipe
        except Exception:  # noqa: BLE001 -- logging must never end the command
            self.handleError(record)


@contextlib.contextmanager
def cli_logging(verbose: bool = False) -> Iterator[None]:
    """Set up logging for one command (see the module doc) and restore the previous set-up after."""
    root, ours = logging.getLogger(), logging.getLogger(PACKAGE)
    quiet = [logging.getLogger(name) for name in QUIET_THIRD_PARTY]
    saved = [(logger, logger.level) for logger in (root, ours, *quiet)]
    handler = _ConsoleHandler(verbose)
    root.addHandler(handler)
    root.setLevel(logging.DEBUG if verbose else logging.WARNING)
    ours.setLevel(logging.DEBUG if verbose else logging.INFO)
    for logger in quiet:
        logger.setLevel(logging.DEBUG if verbose else logging.CRITICAL + 1)
    warnings_logger = logging.getLogger("py.warnings")
    saved.append((warnings_logger, warnings_logger.level))
    warnings_logger.setLevel(logging.DEBUG if verbose else logging.CRITICAL + 1)
    logging.captureWarnings(True)
    try:
        yield
    finally:
        logging.captureWarnings(False)
        root.removeHandler(handler)
        for logger, level in saved:
            logger.setLevel(level)
