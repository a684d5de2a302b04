"""The package's own error type: every error that means "this input cannot work" derives from :class:`CircuitsError`.

Each concrete error also derives from the builtin it always was (``ValueError``, ``OSError``), so code that caught
those keeps working; the command line catches :class:`CircuitsError` to print one line instead of a traceback, and
treats anything else as a bug. This module sits below every layer (it imports nothing).
"""

from __future__ import annotations


class CircuitsError(Exception):
    """A user-facing error of this package: the message names the problem (option, value) and the fix."""
