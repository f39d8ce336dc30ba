"""The one exception class of onnxmbs.

Every message says what is wrong *and* how to fix it; the CLI prints it as one
line and exits 1 (model or data at fault).
"""
from __future__ import annotations


class MBSError(Exception):
    """A problem with the user's model, data, plan or arguments, with a hint how to fix it."""
