"""How a training run ends other than done: TrainingError (bad input, exit 2) and the exit codes."""

from __future__ import annotations

EXIT_PREEMPTED = 143  # 128 + SIGTERM: schedulers read it as "terminated, may be restarted"
EXIT_TOO_MANY_SKIPS = 3  # train.max_consecutive_skips non-finite steps in a row; the last good state saved
EXIT_NOT_TRAINED = 4  # every update skipped, or non-finite parameters at the end: no final/ model


class TrainingError(ValueError):
    """A run that cannot start or go on as configured (its data, sizes, train.out or checkpoints);
    the message names the file, pair or setting and what would work. The CLI's exit code 2."""
