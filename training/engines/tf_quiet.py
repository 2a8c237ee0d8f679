"""Keep TensorFlow's C++ start-up log off the terminal (ENVKIT_TF_VERBOSE=1 or --verbose shows it).

`TF_CPP_MIN_LOG_LEVEL=2` silences TensorFlow's C++ INFO/WARNING lines once its
logging is initialised, but a few lines are written before that (absl's
"All log messages before absl::InitializeLog()" banner, oneDNN's `I0000 ...
port.cc` notice, the CPU-feature notice), straight to file descriptor 2. So
the import and the runtime's start run with fd 2 sent to a temporary file; the
lines that are not such notices (a real error, a Python warning) are written back.
"""

from __future__ import annotations

import contextlib
import os
import sys
import tempfile
from collections.abc import Iterator

from envkit.tf_log import VERBOSE_ENV, is_noise, verbose

__all__ = ["VERBOSE_ENV", "configure_env", "is_noise", "quiet_startup", "verbose"]


def configure_env() -> None:
    """Set TensorFlow's log level before it is imported (an explicit setting of the user wins)."""
    if not verbose():
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


@contextlib.contextmanager
def quiet_startup() -> Iterator[None]:
    """Run the block with fd 2 captured; write back every line that is not start-up noise."""
    if verbose():
        yield
        return
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile(mode="w+b") as capture:
        os.dup2(capture.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            capture.seek(0)
            kept = [
                line
                for line in capture.read().decode("utf-8", "replace").splitlines(keepends=True)
                if not is_noise(line)
            ]
            if kept:
                sys.stderr.write("".join(kept))
                sys.stderr.flush()
