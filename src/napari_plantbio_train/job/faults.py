"""Faults on purpose, for the tests that prove a crash costs the user nothing.

A job process that dies by a signal, or is killed in the middle of writing a checkpoint, must leave the viewer,
its layers and the last good checkpoint untouched. Those deaths cannot be caught, so the tests cause real ones:
``PLANTBIO_TEST_FAULT`` names them, and only the job processes read it.

- ``segfault@N`` / ``abort@N``: the process raises SIGSEGV (as oneDNN's AMX kernels did) or calls ``os.abort``
  once it has reported iteration N.
- ``hold-write@NAME``: the write of the file called NAME (a checkpoint, ``iter_0000004.pt``) stops half way and
  waits, so the test can kill the process inside the write.
"""

from __future__ import annotations

import os
import signal
import time

FAULT_ENV = "PLANTBIO_TEST_FAULT"


def _asked() -> tuple[str, str] | None:
    text = os.environ.get(FAULT_ENV, "")
    if "@" not in text:
        return None
    kind, _, where = text.partition("@")
    return kind.strip(), where.strip()


def at_iteration(iteration: int) -> None:
    """Called by a job process after it reported an iteration."""
    asked = _asked()
    if asked is None or asked[1] != str(iteration):
        return
    if asked[0] == "segfault":
        os.kill(os.getpid(), signal.SIGSEGV)
    elif asked[0] == "abort":
        os.abort()


def holds_write(name: str) -> bool:
    """Whether the write of the file ``name`` should stop half way (see ``hold``)."""
    asked = _asked()
    return asked is not None and asked[0] == "hold-write" and asked[1] == name


def hold() -> None:
    """Wait, in the middle of a write, for the test to kill this process."""
    while True:
        time.sleep(1.0)
