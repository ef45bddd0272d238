"""The error every model-folder problem is reported as: one line for the command line, a message for the docks."""

from __future__ import annotations


class ModelError(Exception):
    """A model folder is missing, incomplete, damaged, busy or not one of ours.

    Not a RuntimeError: napari's worker (superqt) takes a RuntimeError from a job for a deleted Qt object's and
    drops it without telling the dock that the job ended."""
