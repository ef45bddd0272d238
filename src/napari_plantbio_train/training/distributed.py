"""Training on many processes, GPUs and machines with PyTorch's own data parallelism.

One process per GPU (or ``cpu_processes`` per machine on the CPU) runs the same ``train`` loop on its own
windows; ``DistributedDataParallel`` averages the gradients, so every process keeps identical weights and the
job behaves like one process with a batch ``world_size`` times larger (the learning rate is not scaled:
AdamW on averaged gradients). Rank 0 alone writes the model folder and reports events; the others only
compute. Before each iteration the ranks agree on stopping and on one clock (``agree``), so all stop at the
same iteration; at each checkpoint rank 0 records every rank's weight fingerprint (``replica_weights`` in
model.json, all equal) and each job's world size, effective batch and learning rate (``runs``).

Who starts the processes:

- ``launch`` (the command line's ``--gpus N``, ``--cpu-processes N``): PyTorch's elastic launcher starts the
  local processes (spawned, so a process with threads, like napari, may call it) with a static rendezvous; with
  ``--nodes K --node-rank R --master-addr HOST --master-port P`` one such launch runs on every machine and they
  join one job. A process that dies ends the job: the launcher stops the others and ``launch`` raises
  ``RankFailed`` with one line saying which rank died and how.
- ``torchrun`` or SLURM's ``srun`` (one task per GPU): each process finds its place in the job from their
  variables (``environment``) and joins directly; ``--gpus``/``--cpu-processes`` then say nothing about counts.

Every process group is created with a timeout (``PLANTBIO_DIST_TIMEOUT`` seconds, default 1800): a rank that
waits longer than that for the others (a machine that vanished without closing its connections) fails instead
of hanging. Validation runs on rank 0 while the others wait, so the timeout must exceed one validation.

Following a job from another process (the dock starts a multi-GPU job as a subprocess):

- ``napari-plantbio-train train ... --events jsonl`` prints one JSON object per line on stdout, and nothing
  else there (``event_record``): ``{"event": "started" | "progress" | "validation" | "preview" | "checkpoint" |
  "finished", ...}`` with the fields of the event classes in ``events.py`` (paths as absolute strings, tuples
  as lists). A preview's arrays are written by rank 0 as ``.npy`` files in ``<model folder>/previews/`` (the
  two newest are kept) and the line carries their paths (``probabilities``, ``labels``). A job that fails
  prints ``{"event": "error", "field": ... or null, "message": ...}`` and exits non-zero (2: bad input, 1: a
  rank died, 130: aborted). ``follow(lines)`` turns the lines back into the event objects ``train`` yields
  (raising ``JobFailed`` on an error line), so a follower handles the same events as the dock does in-process.
- Stop: create the file ``<model folder>/STOP`` (``stop_file``; rank 0 polls it every iteration and removes
  it when the job ends), or send SIGINT/SIGTERM to the launching process. Either way every rank stops at the
  same iteration and rank 0 writes a checkpoint to resume from, and prints a ``finished`` event whose
  ``reason`` is ``"stopped"``; the process then exits 0 after a STOP file, or 128 + the signal's number after a
  signal (143 for SIGTERM, 130 for SIGINT), so a cluster script can tell a job to resume from a finished one. A
  second SIGINT/SIGTERM to the launcher ends the ranks without waiting for that checkpoint.
"""

from __future__ import annotations

import contextlib
import datetime
import hashlib
import logging
import multiprocessing
import os
import re
import signal
import socket
import tempfile
import threading
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

TIMEOUT_ENV = "PLANTBIO_DIST_TIMEOUT"
DEFAULT_TIMEOUT_S = 1800.0
SHUTDOWN_S = 10  # after a rank dies, the launcher's grace period for the others before it kills them


class DistributedError(Exception):
    """The job's processes cannot be placed: a launch option or environment variable is missing or wrong."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


class RankFailed(Exception):
    """A process of the job died; the others were stopped. ``exitcode`` is that process's (negative: a signal)."""

    def __init__(self, message: str, exitcode: int) -> None:
        super().__init__(message)
        self.exitcode = exitcode


@dataclass(frozen=True)
class Rank:
    """This process's place in the job; the default is the only process of a one-device job."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    local_world_size: int = 1  # processes on this machine, which share its CPU threads
    device: str = "cpu"

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    def threads(self, workers: int) -> int:
        """The machine's ``workers`` CPU threads shared out among the job's processes on it."""
        return max(1, workers // self.local_world_size)


# ----- where this process stands ------------------------------------------------------------------------------
def environment(env: Mapping[str, str] | None = None) -> dict[str, str] | None:
    """torchrun's variables for the job this process was started in, or None for a process started alone.

    torchrun (and ``launch``) set RANK, WORLD_SIZE, LOCAL_RANK, LOCAL_WORLD_SIZE, MASTER_ADDR, MASTER_PORT.
    A SLURM job step (``srun``) gives SLURM_PROCID, SLURM_NTASKS, SLURM_LOCALID and the node list instead; the
    master is the step's first node unless MASTER_ADDR is set. Only a job *step* counts: a batch script itself
    also sees SLURM_NTASKS, and a training command run there directly is one process, not one of many.
    """
    env = os.environ if env is None else env
    if "RANK" in env and "WORLD_SIZE" in env:
        values = {"RANK": env["RANK"], "WORLD_SIZE": env["WORLD_SIZE"], "LOCAL_RANK": env.get("LOCAL_RANK", "0"),
                  "LOCAL_WORLD_SIZE": env.get("LOCAL_WORLD_SIZE", "1"),
                  "MASTER_ADDR": env.get("MASTER_ADDR", "127.0.0.1"), "MASTER_PORT": env.get("MASTER_PORT", "29500")}
    elif "SLURM_PROCID" in env and ("SLURM_STEP_ID" in env or "SLURM_STEPID" in env):
        values = _slurm(env)
    else:
        return None
    for name, value in values.items():
        if name != "MASTER_ADDR" and not value.isdigit():
            raise DistributedError(name, f"{value!r} is not a whole number")
    rank, world = int(values["RANK"]), int(values["WORLD_SIZE"])
    if not 0 <= rank < world:
        raise DistributedError("RANK", f"{rank} is not a rank of a job of {world} process(es)")
    return values


def _slurm(env: Mapping[str, str]) -> dict[str, str]:
    nodes = env.get("SLURM_STEP_NODELIST") or env.get("SLURM_NODELIST") or env.get("SLURM_JOB_NODELIST", "")
    address = env.get("MASTER_ADDR") or first_host(nodes)
    if not address:
        raise DistributedError("MASTER_ADDR", "SLURM gives no node list; set MASTER_ADDR to the first node's name")
    # A port every task of the job computes alike, unless the batch script sets one.
    port = env.get("MASTER_PORT") or str(15000 + int(env.get("SLURM_JOB_ID", "0") or 0) % 20000)
    per_node = tasks_per_node(env.get("SLURM_STEP_TASKS_PER_NODE") or env.get("SLURM_TASKS_PER_NODE") or "1")
    node = int(env.get("SLURM_NODEID", "0") or 0)
    local = per_node[node] if node < len(per_node) else per_node[-1]
    return {"RANK": env["SLURM_PROCID"], "WORLD_SIZE": env.get("SLURM_STEP_NUM_TASKS") or env.get("SLURM_NTASKS", "1"),
            "LOCAL_RANK": env.get("SLURM_LOCALID", "0"), "LOCAL_WORLD_SIZE": str(local),
            "MASTER_ADDR": address, "MASTER_PORT": port}


def first_host(nodelist: str) -> str:
    """The first host of a SLURM node list: ``gpu[07-09,12],cpu3`` -> ``gpu07``."""
    head = re.match(r"([^,\[]*)(?:\[([^\]]*)\])?([^,]*)", nodelist.strip())
    if head is None or not head.group(0):
        return ""
    prefix, ranges, suffix = head.groups()
    if not ranges:
        return prefix + suffix
    return prefix + ranges.split(",")[0].split("-")[0] + suffix


def tasks_per_node(text: str) -> list[int]:
    """SLURM's tasks per node, ``2(x3),1`` -> [2, 2, 2, 1]."""
    counts: list[int] = []
    for part in text.split(","):
        match = re.fullmatch(r"\s*(\d+)(?:\(x(\d+)\))?\s*", part)
        if match is None:
            raise DistributedError("SLURM_TASKS_PER_NODE", f"{text!r} is not SLURM's tasks-per-node list")
        counts += [int(match.group(1))] * int(match.group(2) or 1)
    return counts


def device_for(device_type: str, local_rank: int) -> str:
    """One GPU per process on a machine; under srun with one GPU per task each sees only its own (index 0)."""
    if device_type != "cuda":
        return "cpu"
    count = torch.cuda.device_count()
    return f"cuda:{local_rank % count}" if count else "cuda"


def timeout_s(env: Mapping[str, str] | None = None) -> float:
    env = os.environ if env is None else env
    text = env.get(TIMEOUT_ENV, "")
    try:
        value = float(text) if text else DEFAULT_TIMEOUT_S
    except ValueError:
        raise DistributedError(TIMEOUT_ENV, f"{text!r} is not a number of seconds") from None
    if value <= 0:
        raise DistributedError(TIMEOUT_ENV, f"{text!r} must be a positive number of seconds")
    return value


@contextlib.contextmanager
def process_group(device_type: str) -> Iterator[Rank]:
    """Join the job this process was started in (nccl on GPUs, gloo on the CPU) and leave it afterwards.

    A process started alone, or as the only process of its job, gets a one-process Rank and no group.
    """
    values = environment()
    if values is None or int(values["WORLD_SIZE"]) == 1:
        yield Rank(device=device_for(device_type, 0 if values is None else int(values["LOCAL_RANK"])))
        return
    os.environ.update(values)  # init_process_group reads the env:// variables, whoever set them
    rank = Rank(int(values["RANK"]), int(values["WORLD_SIZE"]), int(values["LOCAL_RANK"]),
                int(values["LOCAL_WORLD_SIZE"]), device_for(device_type, int(values["LOCAL_RANK"])))
    backend = "nccl" if device_type == "cuda" else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(torch.device(rank.device))
    dist.init_process_group(backend, timeout=datetime.timedelta(seconds=timeout_s()))
    try:
        yield rank
    finally:
        dist.destroy_process_group()


# ----- what the ranks agree on ---------------------------------------------------------------------------------
def agree(rank: Rank, stop: bool, elapsed: float) -> tuple[bool, float]:
    """One decision for all ranks before each iteration: stop if any rank was asked to, and one clock.

    The clock matters too: the learning rate follows the time-limit share, and ranks stepping with different
    rates would drift apart.
    """
    if not rank.distributed:
        return stop, elapsed
    flags = torch.tensor([float(stop), elapsed], dtype=torch.float64, device=rank.device)
    dist.all_reduce(flags, op=dist.ReduceOp.MAX)
    return bool(flags[0].item() > 0), float(flags[1].item())


def mean(rank: Rank, value: float) -> float:
    """The mean over ranks (the loss of the whole effective batch, not of rank 0's share)."""
    if not rank.distributed:
        return value
    total = torch.tensor([value], dtype=torch.float64, device=rank.device)
    dist.all_reduce(total)
    return float(total.item()) / rank.world_size


def gather(rank: Rank, value: Any) -> list[Any]:
    """Every rank's ``value``, in rank order, on every rank."""
    if not rank.distributed:
        return [value]
    values: list[Any] = [None] * rank.world_size
    dist.all_gather_object(values, value)
    return values


def weights_digest(state: Mapping[str, torch.Tensor]) -> str:
    """A fingerprint of a set of weights, to check that every rank ended with the same model."""
    digest = hashlib.sha256()
    for name in sorted(state):
        tensor = state[name].detach().to("cpu").contiguous()
        digest.update(name.encode())
        digest.update(str(tensor.dtype).encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()[:16]


# ----- starting the processes ----------------------------------------------------------------------------------
def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((host, 0))
        return int(probe.getsockname()[1])


def launch(entry: Callable[..., Any], args: tuple[Any, ...], *, processes: int, nodes: int = 1, node_rank: int = 0,
           master_addr: str | None = None, master_port: int | None = None, run_id: str = "napari-plantbio-train",
           join_timeout_s: int = 900) -> dict[int, Any]:
    """Run ``entry(*args)`` in ``processes`` new processes on this machine, as part of a job of ``nodes`` machines.

    ``entry`` must be a top-level function and ``args`` plain values: the processes are spawned, not forked.
    Returns what ``entry`` returned, by global rank (this machine's ranks only). The machines meet at
    ``master_addr:master_port`` (node 0 listens there) within ``join_timeout_s``; every machine must give the
    same ``run_id``. SIGINT/SIGTERM asks every local process to stop at the next iteration (see the module
    note); a second one aborts.
    """
    from torch.distributed.elastic.multiprocessing import DefaultLogsSpecs
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    if processes < 1:
        raise DistributedError("processes", f"{processes!r} must be at least 1")
    if nodes < 1 or not 0 <= node_rank < nodes:
        raise DistributedError("node_rank", f"{node_rank!r} must lie between 0 and {nodes - 1} for {nodes} node(s)")
    if nodes > 1 and (master_addr is None or master_port is None):
        raise DistributedError("master_addr", f"a job on {nodes} machines needs the master address and port (node "
                                              "0's host name and a free port there)")
    if master_port is not None and not 0 < master_port < 65536:
        raise DistributedError("master_port", f"{master_port!r} is not a port number (1 to 65535)")
    if master_addr is None:
        master_addr = "127.0.0.1"
    if master_port is None:
        master_port = free_port(master_addr)
    # The launcher keeps its error files in a folder of its own; ours goes once the job is over.
    logs = tempfile.TemporaryDirectory(prefix="plantbio-launch-")
    config = LaunchConfig(
        logs_specs=DefaultLogsSpecs(log_dir=logs.name), min_nodes=nodes, max_nodes=nodes,
        nproc_per_node=processes, run_id=run_id, rdzv_backend="static",
        rdzv_endpoint=f"{master_addr}:{master_port}", rdzv_configs={"rank": node_rank, "timeout": join_timeout_s},
        max_restarts=0, start_method="spawn", monitor_interval=0.2, shutdown_timeout=SHUTDOWN_S,
        # The launcher's SIGINT/SIGTERM are ours (a stop with a checkpoint); the agent keeps the hard ones.
        signals_to_handle="SIGHUP,SIGQUIT", local_addr=master_addr if nodes == 1 else None)
    with logs, _stop_signals_forwarded(), _quiet_launcher_logs():
        try:
            return elastic_launch(config, entry)(*args)
        except ChildFailedError as failed:
            raise RankFailed(*_failure_line(failed)) from None


def _failure_line(failed: Any) -> tuple[str, int]:
    """Which rank died first and how, with the first line of its error where it raised one."""
    rank, failure = failed.get_first_failure()
    if failure.exitcode < 0:
        how = f"was killed by {failure.signal_name()}"
    else:
        how = f"exited with status {failure.exitcode}"
    cause = str(failure.message).strip().splitlines()[0] if failure.message else ""
    generic = failure.exitcode < 0 or "enable traceback" in cause
    detail = "" if generic or not cause else f" ({cause[:200]})"
    return (f"rank {rank} (process {failure.pid} on {socket.gethostname()}) {how}{detail}; the job's other "
            "processes were stopped", failure.exitcode)


@contextlib.contextmanager
def _stop_signals_forwarded() -> Iterator[None]:
    """SIGINT/SIGTERM to the launcher are passed on to each local rank (each then stops with the others at the
    next iteration, and exits with that signal's status); a second one raises KeyboardInterrupt, and the launcher
    tears the ranks down."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    asked = threading.Event()

    def forward(signum: int, frame: Any) -> None:
        if asked.is_set():
            raise KeyboardInterrupt
        asked.set()
        for child in multiprocessing.active_children():
            with contextlib.suppress(ProcessLookupError):
                os.kill(child.pid, signum)

    previous = {s: signal.signal(s, forward) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


@contextlib.contextmanager
def _quiet_launcher_logs() -> Iterator[None]:
    """The elastic agent logs every step, tracebacks included; a failure is reported in one line instead."""
    loggers = [logging.getLogger(name) for name in ("torch.distributed.elastic", "torch.multiprocessing")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        for logger, level in zip(loggers, levels):
            logger.setLevel(level)
