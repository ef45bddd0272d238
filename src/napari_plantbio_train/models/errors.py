"""The error every model-folder problem is reported as: one line for the command line, a message for the docks."""

from __future__ import annotations


class ModelError(RuntimeError):
    """A model folder is missing, incomplete, damaged, busy or not one of ours."""
