"""What a ppnet command shows: ppnet's own progress and results, not TensorFlow's start-up chatter.

TensorFlow's native libraries log while they load and while they look for devices, before absl's
logging is initialised, so ``TF_CPP_MIN_LOG_LEVEL`` does not reach those lines: the absl banner,
"oneDNN custom operations are on", "Could not find cuda drivers" (twice, one per library), and on
a machine without a GPU driver "failed call to cuInit: ... (303)", an *error* line about hardware
the machine does not have. ``load_tensorflow`` mutes the process's stderr (file descriptor 2)
for exactly those two steps, and replays what it caught if either fails, so a broken install
still says why. Everything TensorFlow logs afterwards passes at ``TF_CPP_MIN_LOG_LEVEL=2``
(errors). ``PPNET_VERBOSE=1`` (or a command's ``--verbose``) shows all of it again.
"""

from __future__ import annotations

import logging
import os
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext

VERBOSE_ENV = "PPNET_VERBOSE"


def verbose_requested() -> bool:
    """``PPNET_VERBOSE`` set to anything but empty or ``0``."""
    return os.environ.get(VERBOSE_ENV, "") not in ("", "0")


def setup_logging() -> None:
    """ppnet's own log lines at INFO (``HH:MM:SS ppnet.module: message``), other libraries' at
    WARNING (TensorFlow's: see ``load_tensorflow``)."""
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    logging.getLogger("ppnet").setLevel(logging.INFO)


@contextmanager
def muted_stderr() -> Iterator[None]:
    """Send file descriptor 2 (what native libraries write to) to a scratch file for the block;
    if the block raises, write what was caught to stderr before the exception goes on."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as caught:
        os.dup2(caught.fileno(), 2)
        try:
            yield
        except BaseException:
            os.dup2(saved, 2)
            caught.seek(0)
            sys.stderr.write(caught.read().decode(errors="replace"))
            raise
        finally:
            os.dup2(saved, 2)
            os.close(saved)


def load_tensorflow(verbose: bool | None = None) -> None:
    """Import TensorFlow and discover its devices, quietly unless verbose (see the module doc).

    Call it before anything else imports TensorFlow (the CLI does, first thing; so do the notebook
    and the bench). Discovering the physical devices does not create TensorFlow's context, so a
    ``tf.distribute`` strategy can still be configured afterwards. TensorFlow's Python logger is
    set to ERROR unless verbose: its warnings at export time ("Issue encountered when serializing
    table_initializer ... probably safe to ignore") are about its own graph bookkeeping, nothing a
    user can act on.
    """
    verbose = verbose_requested() if verbose is None else verbose
    logging.getLogger("tensorflow").setLevel(logging.INFO if verbose else logging.ERROR)
    if "tensorflow" in sys.modules:  # already loaded, and already logged what it logs
        return
    if verbose:
        os.environ["TF_CPP_MIN_LOG_LEVEL"] = "0"
    with nullcontext() if verbose else muted_stderr():
        import tensorflow as tf

        tf.config.list_physical_devices()
