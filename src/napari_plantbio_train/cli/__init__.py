"""Headless front end: the same engine and model folders as the dock widget, for clusters and scripts.

Option names are a promise to scripts: keep them. A bad value ends the program with one line naming the
field (exit status 2), never a traceback. Exit statuses: 0 done (a STOP file's stop and a time limit included),
2 bad input or a model folder that cannot be used, 1 a fault of the machine (a disk that is full: one line naming
the file, what it needed and the last good checkpoint) or a process of the job that died, 128 + N a job that
SIGTERM (143) or SIGINT (130) stopped, with a checkpoint to resume from.

``train`` runs in this process, or, for ``--gpus N`` (N > 1), ``--cpu-processes N`` (N > 1) or ``--nodes K``
(K > 1), as that many data-parallel processes started by PyTorch's launcher (see training/distributed.py and io/wire.py, which
describe ``--events jsonl`` and the STOP file for programs that follow a job). Started by ``torchrun`` or
``srun``, it is one process of their job and joins it directly.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from typing import TextIO

from ..io.files import DiskFull
from ..job.config import ConfigError
from ..models.store import ModelError
from ..training.distributed import DistributedError, RankFailed
from .commands import _run_evaluate, _run_export, _run_import, _run_models, _run_predict, _run_train
from .parser import build_parser
from .progress import _error_event


def main(argv: Sequence[str] | None = None, out: TextIO | None = None) -> int:
    out = out or sys.stdout
    args = build_parser().parse_args(argv)
    runners = {"train": _run_train, "predict": _run_predict, "evaluate": _run_evaluate, "models": _run_models,
               "export": _run_export, "import": _run_import}
    try:
        return runners[args.command](args, out)
    except DiskFull as exc:
        return _fail(args, out, str(exc), 1)
    except (ConfigError, DistributedError) as exc:
        return _fail(args, out, str(exc), 2, exc.field)
    except (ModelError, FileNotFoundError, FileExistsError) as exc:
        return _fail(args, out, str(exc), 2)
    except RankFailed as exc:
        return _fail(args, out, str(exc), 2 if exc.exitcode == 2 else 1)
    except KeyboardInterrupt:
        return _fail(args, out, "aborted: the job's processes were ended; resume from its last checkpoint", 130)


def _fail(args: argparse.Namespace, out: TextIO, message: str, status: int, field: str | None = None) -> int:
    """One line on stderr; with --events jsonl also an error event, so a program following stdout sees why."""
    print(f"error: {message}", file=sys.stderr, flush=True)
    if getattr(args, "events", None) == "jsonl":
        _error_event(out, message, field)
    return status


def entry() -> None:
    """The program itself (console script, ``python -m``): a process that has not computed anything yet, so a
    precision verdict that needs oneDNN held below AMX can still set the limit (see hardware.py)."""
    from ..runtime.hardware import fresh_process, step_aside

    fresh_process()
    step_aside()
    status = main()
    if status:
        # The failure is said in one line. A zarr write it cut short leaves tasks on zarr's event loop, which
        # asyncio reports at exit ("Task was destroyed but it is pending!", seen after a file-size limit):
        # noise after the line that says what happened, so this exiting process no longer logs asyncio's.
        logging.getLogger("asyncio").disabled = True
    sys.exit(status)
