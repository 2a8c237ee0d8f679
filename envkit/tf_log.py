"""TensorFlow's C++ start-up log: what counts as noise, and the switch that brings it back.

TensorFlow writes notices to file descriptor 2 before and after its logging starts:
absl's "All log messages before absl::InitializeLog()" banner, oneDNN's
`I0000 ... port.cc` notice, the CPU-feature notice. envkit keeps them off the
terminal by default (the training engine and the doctor probe); `ENVKIT_TF_VERBOSE=1`
(or `envkit train --verbose`) shows them again.
"""

from __future__ import annotations

import os
import re

VERBOSE_ENV = "ENVKIT_TF_VERBOSE"
# absl/glog-style INFO and WARNING lines (E and F lines, errors, are kept), and the known banners
_NOISE = re.compile(
    r"^(?:[IW]\d{4} |WARNING: All log messages before absl::InitializeLog|"
    r"To enable the following instructions:|This TensorFlow binary is optimized)"
)
# The same without WARNING lines: what doctor hides (a W line may say a GPU library did not load)
_INFO_NOISE = re.compile(
    r"^(?:I\d{4} |WARNING: All log messages before absl::InitializeLog|"
    r"To enable the following instructions:|This TensorFlow binary is optimized)"
)


def verbose() -> bool:
    """True when the user asked for TensorFlow's own log."""
    return os.environ.get(VERBOSE_ENV, "").strip().lower() in ("1", "true", "yes", "on")


def is_noise(line: str) -> bool:
    """Is `line` one of TensorFlow's start-up notices (INFO, WARNING or a banner)?"""
    return bool(_NOISE.match(line))


def strip_info(text: str) -> str:
    """`text` without TensorFlow's INFO lines and banners; warnings and errors stay."""
    return "".join(ln for ln in text.splitlines(keepends=True) if not _INFO_NOISE.match(ln))
