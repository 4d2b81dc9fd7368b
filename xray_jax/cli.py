"""What the command-line entry points share: absl startup and one-line errors."""

from __future__ import annotations

import logging as std_logging
import os
import sys
from collections.abc import Callable

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # TensorFlow's C++ start-up chatter hides our logs

from absl import app
from absl import flags
from absl import logging

from xray_jax import errors
from xray_jax import images

# Errors a user can fix from the message alone: printed as one line, exit code 2.
# FloatingPointError is a diverged run: its message names the step, files and a fix.
USER_ERRORS: tuple[type[BaseException], ...] = (errors.UsageError, images.ImageLoadError, FloatingPointError)


# Libraries whose INFO lines (every checkpoint write, every dataset read) drown ours.
_CHATTY = ("/orbax/", "/tensorflow_datasets/", "/jax/_src/xla_bridge", "/etils/")


def _quiet_libraries(record: std_logging.LogRecord) -> bool:
  return record.levelno >= std_logging.WARNING or not any(s in record.pathname for s in _CHATTY)


def run(main: Callable[[list[str]], None], user_errors: tuple[type[BaseException], ...] = (),
        positional: bool = False) -> None:
  """app.run(main), turning the errors a user can fix into one line without a traceback.

  `--verbosity=1` (or higher) shows the traceback too.
  """
  errors = USER_ERRORS + user_errors

  def wrapped(argv: list[str]) -> None:
    if len(argv) > 1 and not positional:
      raise app.UsageError(f"Unexpected arguments {argv[1:]}; flags are written --name=value.")
    logging.get_absl_handler().addFilter(_quiet_libraries)
    try:
      main(argv)
    except errors as e:
      if flags.FLAGS.verbosity >= 1:
        logging.exception("Traceback:")
      print(f"error: {e}", file=sys.stderr)
      sys.exit(2)

  app.run(wrapped)
