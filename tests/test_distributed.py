"""Data-parallel training for real: gloo process groups of CPU processes on this machine, started by the
command line as a user would (PyTorch's launcher, spawned processes), on a crop of the chloroplast stack."""

from __future__ import annotations

import json
import os
import queue
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from napari_plantbio_train import planning
from napari_plantbio_train.planning.plan import LR
from napari_plantbio_train.runtime.hardware import processes_per_machine
from napari_plantbio_train.io import wire
from napari_plantbio_train.training import distributed
from napari_plantbio_train.cli import main
from napari_plantbio_train.job.config import TrainConfig
from napari_plantbio_train.training.distributed import DistributedError, Rank, environment, first_host, tasks_per_node, weights_digest
from napari_plantbio_train.io.wire import JobFailed, event_from_record, event_record, follow
from napari_plantbio_train.job.events import CheckpointSaved, Finished, Preview, Progress, Started, Validation
from napari_plantbio_train.models.store import ModelStore

CLI = [sys.executable, "-m", "napari_plantbio_train.cli", "train"]
# Two threads for the machine's two processes: one each.
JOB = ["--mode", "instance", "--dims", "3d", "--voxel-size", "5", "5", "50", "--window", "2,64,64", "--gpus", "0",
       "--workers", "2", "--batch-size", "1", "--base-channels", "4", "--depth", "2", "--precision", "fp32",
       "--quiet"]
LIMIT_S = 120  # a bound, not an expectation: a job here takes 5-10 s, more while other work shares the cores


@pytest.fixture(scope="module")
def stack(tmp_path_factory, chloroplast_crop) -> list[str]:
    folder = tmp_path_factory.mktemp("stack")
    image, labels = chloroplast_crop
    np.save(folder / "image.npy", image)
    np.save(folder / "labels.npy", labels)
    return ["--image", str(folder / "image.npy"), "--labels", str(folder / "labels.npy")]


def _run(args: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=LIMIT_S)


def _events(stdout: str) -> list:
    return list(follow(stdout.splitlines()))


def _of(events, kind):
    return [e for e in events if isinstance(e, kind)]


@pytest.fixture(scope="module")
def two_process_model(tmp_path_factory, stack):
    """One job of two CPU processes, shared by the tests that only look at what it left."""
    models = tmp_path_factory.mktemp("models")
    done = _run([*stack, *JOB, "--name", "pair", "--models-dir", str(models), "--cpu-processes", "2",
                 "--iterations", "4", "--iteration-save", "2", "--validate-every", "4", "--log-every", "1",
                 "--events", "jsonl"])
    assert done.returncode == 0, done.stderr
    return models, _events(done.stdout)


def test_two_cpu_processes_train_one_model_reported_once(two_process_model):
    models, events = two_process_model
    assert isinstance(events[0], Started) and isinstance(events[-1], Finished)
    assert events[-1].reason == "completed" and events[-1].iteration == 4
    # Rank 0 alone reports and writes: every iteration once, one set of checkpoints, one metrics row each.
    assert [p.iteration for p in _of(events, Progress)] == [1, 2, 3, 4]
    assert all(np.isfinite(p.loss) for p in _of(events, Progress))
    assert sorted(os.listdir(models)) == [".pair.lock", "pair"]  # the folder and its owner's lock (models/lock.py)
    folder = models / "pair"
    assert sorted(os.listdir(folder / "checkpoints")) == ["best.pt", "iter_0000002.pt", "iter_0000004.pt"]
    rows = (folder / "metrics.csv").read_text().splitlines()[1:]
    assert [int(r.split(",")[0]) for r in rows] == [1, 2, 3, 4]
    meta = json.loads((folder / "model.json").read_text())
    assert meta["runs"] == [{"from_iteration": 0, "world_size": 2, "device": "cpu", "batch_size": 1,
                             "iteration_step": 1, "effective_batch_size": 2, "lr": LR}]  # the plan's rate
    preview = _of(events, Preview)[-1]  # read back from the .npy files rank 0 wrote
    z, y, x = (b - a for a, b in events[0].validation_region)
    assert preview.probabilities.shape == (2, z, y, x) and preview.labels.shape == (z, y, x)
    model, record = ModelStore(models).load_model("pair", "last")
    assert record.iterations_done == 4


def test_both_ranks_end_with_the_same_weights(two_process_model):
    models, _ = two_process_model
    meta = json.loads((models / "pair" / "model.json").read_text())
    replicas = meta["replica_weights"]  # each rank's fingerprint at the last checkpoint, gathered by rank 0
    last = torch.load(models / "pair" / "checkpoints" / "iter_0000004.pt", weights_only=True)["model"]
    earlier = torch.load(models / "pair" / "checkpoints" / "iter_0000002.pt", weights_only=True)["model"]
    assert len(replicas) == 2 and replicas[0] == replicas[1] == weights_digest(last)
    assert weights_digest(earlier) != weights_digest(last)


def test_two_processes_step_like_one_process_accumulating_two_batches(stack, tmp_path, capsys):
    """Window streams are numbered across the job's drawers, so two ranks with a batch each draw exactly the
    windows one process draws from two window processes with iteration step 2; and DDP averages the ranks'
    gradients as accumulation averages the batches'. The first updates agree to float rounding, while one
    process with one batch steps elsewhere."""
    first = ["train", *stack, *JOB, "--models-dir", str(tmp_path), "--iterations", "1", "--iteration-save", "1"]
    done = _run([*first[1:], "--name", "two", "--cpu-processes", "2"])
    assert done.returncode == 0, done.stderr
    assert main([*first, "--name", "accumulated", "--iteration-step", "2", "--data-workers", "2"]) == 0
    assert main([*first, "--name", "single"]) == 0

    def weights(name: str) -> dict:
        return torch.load(tmp_path / name / "checkpoints" / "iter_0000001.pt", weights_only=True)["model"]

    two, accumulated, single = weights("two"), weights("accumulated"), weights("single")
    assert max(float((two[k] - accumulated[k]).abs().max()) for k in two) < 1e-6
    assert max(float((two[k] - single[k]).abs().max()) for k in two) > 1e-4


def test_resume_continues_the_count_across_process_counts(two_process_model, tmp_path, capsys):
    models, _ = two_process_model
    shutil.copytree(models / "pair", tmp_path / "pair")
    resume = ["train", "--name", "pair", "--resume", "--models-dir", str(tmp_path), "--quiet", "--events", "jsonl"]
    assert main([*resume, "--iterations", "6", "--cpu-processes", "1"]) == 0  # two processes -> one
    started = _events(capsys.readouterr().out)[0]
    assert started.start_iteration == 4
    done = _run([*resume[1:], "--iterations", "8", "--cpu-processes", "2"])  # and back to two
    assert done.returncode == 0, done.stderr
    events = _events(done.stdout)
    assert events[0].start_iteration == 6 and [p.iteration for p in _of(events, Progress)] == [7, 8]
    meta = json.loads((tmp_path / "pair" / "model.json").read_text())
    assert meta["iterations_done"] == 8 and [r["world_size"] for r in meta["runs"]] == [2, 1, 2]
    assert [r["from_iteration"] for r in meta["runs"]] == [0, 4, 6]
    rows = (tmp_path / "pair" / "metrics.csv").read_text().splitlines()[1:]
    assert [int(r.split(",")[0]) for r in rows][-4:] == [5, 6, 7, 8]


def test_two_machines_on_loopback(stack, tmp_path):
    port = distributed.free_port()
    common = [*CLI, *stack, *JOB, "--name", "nodes", "--models-dir", str(tmp_path), "--iterations", "3",
              "--iteration-save", "3", "--nodes", "2", "--master-addr", "127.0.0.1", "--master-port", str(port)]
    nodes = [subprocess.Popen([*common, "--node-rank", str(r)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True) for r in (0, 1)]
    try:
        results = [node.communicate(timeout=LIMIT_S) for node in nodes]
    except subprocess.TimeoutExpired:
        for node in nodes:
            node.kill()
        pytest.fail(f"the two machines did not finish within {LIMIT_S} s: {[n.communicate() for n in nodes]}")
    assert [node.returncode for node in nodes] == [0, 0], [err for _, err in results]
    assert "finished (completed) at iteration 3" in results[0][0] and results[1][0] == ""  # node 1 says nothing
    meta = json.loads((tmp_path / "nodes" / "model.json").read_text())
    assert meta["iterations_done"] == 3 and meta["runs"][0]["world_size"] == 2
    assert len(set(meta["replica_weights"])) == 1


class Job:
    """A two-process job in the background, its JSON lines read as they come."""

    def __init__(self, stack: list[str], models: Path, name: str) -> None:
        self.folder = models / name
        self.process = subprocess.Popen(
            [*CLI, *stack, *JOB, "--name", name, "--models-dir", str(models), "--cpu-processes", "2",
             "--iterations", "100000", "--iteration-save", "100000", "--validate-every", "100000", "--events",
             "jsonl"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.lines: queue.Queue = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()
        self.events: list = []

    def _read(self) -> None:
        for line in self.process.stdout:
            self.lines.put(line)
        self.lines.put(None)

    def wait_for_iteration(self, iteration: int) -> None:
        deadline = time.monotonic() + LIMIT_S
        while time.monotonic() < deadline:
            line = self.lines.get(timeout=LIMIT_S)
            assert line is not None, self.process.stderr.read()
            self.events += list(follow([line]))
            if self.events and isinstance(self.events[-1], Progress) and self.events[-1].iteration >= iteration:
                return
        raise AssertionError(f"no iteration {iteration} within {LIMIT_S} s")

    def finish(self) -> tuple[int, str]:
        try:
            self.process.wait(timeout=LIMIT_S)
        finally:
            self.process.kill()
        rest = []
        while (line := self.lines.get(timeout=LIMIT_S)) is not None:
            rest.append(line)
        self.tail = rest
        return self.process.returncode, self.process.stderr.read()

    def ranks(self) -> list[int]:
        """The launcher's spawned children (its rank processes), from /proc."""
        pids = []
        for task in Path(f"/proc/{self.process.pid}/task").iterdir():
            pids += [int(p) for p in (task / "children").read_text().split()]
        return [p for p in pids if b"spawn_main" in Path(f"/proc/{p}/cmdline").read_bytes()]


linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="finds rank processes in /proc")


@linux_only
def test_a_killed_rank_ends_the_job_with_one_line(stack, tmp_path):
    job = Job(stack, tmp_path, "killed")
    job.wait_for_iteration(3)
    ranks = job.ranks()
    assert len(ranks) == 2
    os.kill(max(ranks), signal.SIGKILL)
    killed_at = time.monotonic()
    status, stderr = job.finish()
    assert time.monotonic() - killed_at < distributed.SHUTDOWN_S + 15
    assert status not in (0, None)
    message = stderr.strip().splitlines()[-1]
    assert message.startswith("error: rank ") and "SIGKILL" in message and str(max(ranks)) in message
    with pytest.raises(JobFailed, match="SIGKILL"):
        list(follow(job.tail))
    assert not any(Path(f"/proc/{pid}").exists() for pid in ranks)
    assert not ModelStore(tmp_path).exists("killed")  # no checkpoint was due: nothing half-written either


@linux_only
def test_sigterm_to_the_launcher_stops_every_rank_with_a_checkpoint(stack, tmp_path):
    job = Job(stack, tmp_path, "terminated")
    job.wait_for_iteration(3)
    ranks = job.ranks()
    job.process.send_signal(signal.SIGTERM)
    status, stderr = job.finish()
    assert status == 143, stderr  # stopped by SIGTERM, with a checkpoint: not the 0 of a completed job
    events = list(follow(job.tail))
    finished = events[-1]
    assert isinstance(finished, Finished) and finished.reason == "stopped" and finished.iteration >= 3
    assert _of(events, CheckpointSaved)[-1].reason == "stop"
    record = ModelStore(tmp_path).record("terminated")
    assert record.iterations_done == finished.iteration
    assert not any(Path(f"/proc/{pid}").exists() for pid in ranks)


def test_a_stop_file_from_another_process_stops_every_rank(stack, tmp_path):
    """Rank 0 alone sees the file; rank 1 stops at the same iteration because the ranks agree each iteration
    (otherwise it would wait for rank 0 forever, and the job would not end cleanly)."""
    job = Job(stack, tmp_path, "filed")
    job.wait_for_iteration(3)
    wire.stop_file(job.folder).touch()
    status, stderr = job.finish()
    assert status == 0, stderr
    finished = list(follow(job.tail))[-1]
    assert finished.reason == "stopped"
    assert ModelStore(tmp_path).record("filed").iterations_done == finished.iteration
    assert not wire.stop_file(job.folder).exists()  # removed, so a resumed job does not stop at once


# ----- without processes ----------------------------------------------------------------------------------------
def test_environment_reads_torchrun_variables():
    assert environment({}) is None
    values = environment({"RANK": "3", "WORLD_SIZE": "4", "LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "2",
                          "MASTER_ADDR": "node0", "MASTER_PORT": "29400"})
    assert values == {"RANK": "3", "WORLD_SIZE": "4", "LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "2",
                      "MASTER_ADDR": "node0", "MASTER_PORT": "29400"}
    with pytest.raises(DistributedError, match="RANK"):
        environment({"RANK": "4", "WORLD_SIZE": "4"})
    with pytest.raises(DistributedError, match="WORLD_SIZE"):
        environment({"RANK": "0", "WORLD_SIZE": "four"})


def test_environment_reads_a_slurm_step_but_not_its_batch_script():
    batch = {"SLURM_PROCID": "0", "SLURM_NTASKS": "8", "SLURM_NODELIST": "gpu[07-09,12]", "SLURM_JOB_ID": "4242",
             "SLURM_TASKS_PER_NODE": "2(x4)"}
    assert environment(batch) is None  # the batch script itself is one process, whatever it was allotted
    step = {**batch, "SLURM_STEP_ID": "0", "SLURM_PROCID": "5", "SLURM_LOCALID": "1", "SLURM_NODEID": "2"}
    values = environment(step)
    assert values == {"RANK": "5", "WORLD_SIZE": "8", "LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "2",
                      "MASTER_ADDR": "gpu07", "MASTER_PORT": str(15000 + 4242 % 20000)}
    assert environment({**step, "MASTER_ADDR": "login1", "MASTER_PORT": "12345"})["MASTER_ADDR"] == "login1"


def test_slurm_lists():
    assert first_host("gpu[07-09,12],cpu3") == "gpu07"
    assert first_host("node5,node6") == "node5"
    assert first_host("rack1-n[003-004]-ib") == "rack1-n003-ib"
    assert tasks_per_node("2(x3),1") == [2, 2, 2, 1]
    with pytest.raises(DistributedError, match="SLURM_TASKS_PER_NODE"):
        tasks_per_node("two")


def test_rank_shares_the_machines_threads():
    assert Rank().is_main and not Rank().distributed
    rank = Rank(rank=1, world_size=4, local_rank=1, local_world_size=2)
    assert not rank.is_main and rank.distributed and rank.threads(8) == 4 and rank.threads(1) == 1


def test_events_travel_as_json_lines(tmp_path):
    rng = np.random.default_rng(0)
    events = [
        Started(tmp_path / "m", 10, 2, (2, 64, 64), "cpu", ((0, 4), (0, 32), (0, 64)), "fp32"),
        Progress(3, 10, 0.5, 1e-3, 0.1, 0.01, 0.7),
        Validation(3, 0.25, {"f1": 0.25}, True),
        Preview(3, rng.random((2, 4, 32, 64), dtype=np.float32), rng.integers(0, 5, (4, 32, 64)).astype(np.uint32),
                (0, 0, 0), ("foreground", "contour")),
        CheckpointSaved(3, tmp_path / "m" / "checkpoints" / "best.pt", "best"),
        Finished(3, tmp_path / "m", True, "stopped", 0.25),
    ]
    lines = [json.dumps(event_record(e, tmp_path / "m" / "previews")) for e in events]
    back = list(follow(["not json", *lines]))
    assert back[:3] == events[:3] and back[4:] == events[4:]
    assert np.array_equal(back[3].probabilities, events[3].probabilities)
    assert np.array_equal(back[3].labels, events[3].labels) and back[3].offset == (0, 0, 0)
    for iteration in (4, 5):  # only the two newest previews stay on disk
        event_record(Preview(iteration, events[3].probabilities, events[3].labels, (0, 0, 0), ()),
                     tmp_path / "m" / "previews")
    assert len(list((tmp_path / "m" / "previews").glob("*.npy"))) == 4
    assert list(follow([lines[3]])) == []  # a preview already replaced is skipped, not an error
    with pytest.raises(ValueError, match="event kind"):
        event_from_record({"event": "nonsense"})


def test_cpu_processes_is_checked_with_its_name(monkeypatch):
    assert [p.field for p in TrainConfig(name="m", cpu_processes=0).problems()] == ["cpu_processes"]
    monkeypatch.setattr("napari_plantbio_train.runtime.hardware.cuda_device_count", lambda: 4)
    assert planning.problems(TrainConfig(name="m", gpus=4)) == []
    assert processes_per_machine(TrainConfig(name="m", gpus=4)) == 4
    problems = planning.problems(TrainConfig(name="m", gpus=2, cpu_processes=2))
    assert [p.field for p in problems] == ["cpu_processes"]


def test_train_called_in_process_refuses_a_job_of_several_processes(chloroplast_crop, models_dir):
    from napari_plantbio_train.job.config import ConfigError
    from napari_plantbio_train.training.loop import train

    image, labels = chloroplast_crop
    with pytest.raises(ConfigError, match="command line") as error:
        next(train(TrainConfig(name="m", gpus=0, cpu_processes=2), image, labels, models_dir=models_dir))
    assert error.value.field == "cpu_processes" and not models_dir.exists()


@pytest.mark.parametrize("extra,field", [(["--cpu-processes", "0"], "cpu_processes"),
                                         (["--cpu-processes", "2", "--window", "2,66,64"], "window"),
                                         (["--nodes", "2"], "master_addr"),
                                         (["--nodes", "2", "--node-rank", "2", "--master-addr", "h",
                                           "--master-port", "1"], "node_rank"),
                                         (["--nodes", "2", "--master-addr", "h", "--master-port", "70000"],
                                          "master_port")])
def test_bad_process_options_are_one_line_before_any_process_starts(stack, tmp_path, capsys, extra, field):
    assert main(["train", *stack, *JOB, "--name", "bad", "--models-dir", str(tmp_path), *extra]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"error: {field}:")
    assert not (tmp_path / "bad").exists()
