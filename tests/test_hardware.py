"""Precision verdicts: "auto" uses only a number format a child process has seen survive a training step here.

A probe child that crashes (SIGSEGV, as oneDNN's AMX bf16 kernels did on Sapphire Rapids) costs the child: the
caller falls back to the next candidate. The crash is made by the test switch PLANTBIO_PROBE_FAULT, a real
signal in a real child process, so this is proven on machines without AMX too.
"""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch

from napari_plantbio_train.runtime import hardware
from napari_plantbio_train.job.config import ConfigError, TrainConfig
from napari_plantbio_train.job.events import Started, run_to_end
from napari_plantbio_train.runtime.hardware import AMX_OFF, FAULT_ENV, ISA_ENV, Machine, Probe, Verdict, candidates, choose_precision, run_probe, usable
from napari_plantbio_train.models.store import ModelStore
from napari_plantbio_train.training.loop import train

CPU = torch.device("cpu")
PROBE = Probe({"spatial_dims": 2, "in_channels": 1, "out_channels": 2, "base_channels": 4, "depth": 2},
              (32, 32), 1, "instance")
# A Sapphire Rapids as far as the candidates go: bf16 emulated on this CPU still runs, just slowly.
AMX_MACHINE = Machine(cpu="test AMX CPU", bf16=True, amx=True, gpu=None, torch=torch.__version__)


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("PLANTBIO_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv(FAULT_ENV, raising=False)
    return tmp_path / "cache" / hardware.VERDICTS_FILE


def test_candidates_are_fastest_first_and_end_in_fp32():
    assert [c.name for c in candidates(CPU, AMX_MACHINE)] == ["bf16", "bf16-amx-off", "fp32"]
    plain = Machine(cpu="old CPU", bf16=False, amx=False, gpu=None, torch=torch.__version__)
    assert [c.name for c in candidates(CPU, plain)] == ["fp32"]


def test_a_probe_that_crashes_is_reported_with_its_signal(cache, monkeypatch):
    monkeypatch.setenv(FAULT_ENV, "fp32")
    works, detail = run_probe(hardware.Candidate("fp32"), CPU, PROBE)
    assert not works and "SIGSEGV" in detail
    monkeypatch.delenv(FAULT_ENV)
    works, detail = run_probe(hardware.Candidate("fp32"), CPU, PROBE)
    assert works and detail.startswith("ok")


def test_a_crashing_probe_makes_auto_fall_back_and_the_cached_verdict_is_used_next_time(cache, monkeypatch):
    monkeypatch.setenv(FAULT_ENV, "bf16")
    verdict = choose_precision("auto", CPU, PROBE, machine=AMX_MACHINE)
    assert (verdict.precision, verdict.isa_limit) == ("bf16", AMX_OFF)
    assert "bf16 crashed (SIGSEGV)" in verdict.reason and verdict.reason.startswith("bf16 with AMX off")

    monkeypatch.setenv(FAULT_ENV, "bf16,bf16-amx-off")
    other = Machine(cpu="another AMX CPU", bf16=True, amx=True, gpu=None, torch=torch.__version__)
    verdict = choose_precision("auto", CPU, PROBE, machine=other)
    assert verdict.precision == "fp32" and verdict.isa_limit is None
    assert "bf16 with AMX off crashed (SIGSEGV)" in verdict.reason

    # No probe runs for a machine already judged: without the faults a probe would now pick plain bf16.
    monkeypatch.delenv(FAULT_ENV)
    assert choose_precision("auto", CPU, PROBE, machine=other) == verdict
    assert len(json.loads(cache.read_text())) == 2


def test_nothing_works_is_one_line_naming_the_field(cache, monkeypatch):
    monkeypatch.setenv(FAULT_ENV, "fp32")
    plain = Machine(cpu="doomed CPU", bf16=False, amx=False, gpu=None, torch=torch.__version__)
    with pytest.raises(ConfigError) as caught:
        choose_precision("auto", CPU, PROBE, machine=plain)
    assert caught.value.field == "precision" and "fp32 crashed (SIGSEGV)" in str(caught.value)
    assert not cache.exists()  # a failure is not a verdict: the next job probes again


def test_an_explicit_format_is_used_as_asked_without_a_probe(cache, monkeypatch):
    monkeypatch.setenv(FAULT_ENV, "fp32,bf16")
    assert choose_precision("fp32", CPU, PROBE).precision == "fp32"
    with pytest.raises(ConfigError):
        choose_precision("fp8", CPU, PROBE)


def test_a_verdict_that_needs_amx_off_is_fp32_in_a_process_that_may_have_computed(monkeypatch):
    monkeypatch.delenv(ISA_ENV, raising=False)
    needs_limit = Verdict("bf16", AMX_OFF, "bf16 with AMX off: test")
    fallen = usable(needs_limit)
    assert fallen.precision == "fp32" and ISA_ENV in fallen.reason
    monkeypatch.setenv(ISA_ENV, AMX_OFF)  # set before the process computed (by the command line, a launcher)
    assert usable(needs_limit) == needs_limit


def test_training_reports_the_verdict_in_its_start_event_and_model_json(tmp_path, cache):
    rng = np.random.default_rng(0)
    image = rng.integers(0, 255, (48, 48), dtype=np.uint8)
    labels = np.zeros((48, 48), np.uint8)
    labels[10:30, 10:30] = 1
    config = TrainConfig(name="probed", mode="semantic", dims="2d", window=(16, 16), base_channels=4, depth=2,
                         iterations=2, validate_every=2, iteration_save=2, batch_size=1)
    _, events = run_to_end(train(config, image, labels, models_dir=tmp_path / "models"))
    started = next(e for e in events if isinstance(e, Started))
    assert "a training step ran in a probe" in started.precision_reason
    meta = json.loads((ModelStore(tmp_path / "models").folder("probed") / "model.json").read_text())
    assert meta["precision"]["precision"] == started.precision
    assert meta["precision"]["reason"] == started.precision_reason
    assert cache.exists()


def test_the_command_line_refuses_in_one_line_when_no_format_survives(tmp_path, cache, monkeypatch):
    import subprocess
    import sys

    import tifffile

    rng = np.random.default_rng(1)
    tifffile.imwrite(tmp_path / "image.tif", rng.integers(0, 255, (48, 48), dtype=np.uint8))
    labels = np.zeros((48, 48), np.uint8)
    labels[5:25, 5:25] = 1
    tifffile.imwrite(tmp_path / "labels.tif", labels)
    env = {**os.environ, FAULT_ENV: "fp32,bf16,bf16-amx-off"}
    done = subprocess.run([sys.executable, "-m", "napari_plantbio_train.cli", "train", "--image",
                           str(tmp_path / "image.tif"), "--labels", str(tmp_path / "labels.tif"), "--mode",
                           "semantic", "--dims", "2d", "--name", "doomed", "--window", "16,16", "--iterations", "2",
                           "--base-channels", "4", "--depth", "2", "--models-dir", str(tmp_path / "models")],
                          capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: precision: no number format ran") and "SIGSEGV" in lines[0]
    assert not (tmp_path / "models" / "doomed").exists()  # refused before anything was written


# ----- a verdict per step -----------------------------------------------------------------------------------------
# On a Sapphire Rapids (torch 2.13.0) bf16 with AMX ran the planned 4x128x128 step and crashed on an 8x256x256 one:
# the fault switch "bf16@64x64" plays that, a real SIGSEGV in the probe child on one window only.
SMALL = Probe({"spatial_dims": 2, "in_channels": 1, "out_channels": 2, "base_channels": 4, "depth": 2},
              (32, 32), 1, "instance")
LARGE = Probe({"spatial_dims": 2, "in_channels": 1, "out_channels": 2, "base_channels": 4, "depth": 2},
              (64, 64), 1, "instance")


def test_a_format_that_ran_one_window_is_not_trusted_with_another(cache, monkeypatch):
    monkeypatch.setenv(FAULT_ENV, "bf16@64x64")
    small = choose_precision("auto", CPU, SMALL, machine=AMX_MACHINE)
    assert (small.precision, small.isa_limit) == ("bf16", None)
    large = choose_precision("auto", CPU, LARGE, machine=AMX_MACHINE)  # a family verdict would have said bf16
    assert (large.precision, large.isa_limit) == ("bf16", AMX_OFF) and "bf16 crashed (SIGSEGV)" in large.reason
    assert len(json.loads(cache.read_text())) == 2


def test_steps_run_in_one_process_share_the_first_format_that_ran_them_all(cache, monkeypatch):
    monkeypatch.setenv(FAULT_ENV, "bf16@64x64")
    both = choose_precision("auto", CPU, [SMALL, LARGE], machine=AMX_MACHINE)
    assert (both.precision, both.isa_limit) == ("bf16", AMX_OFF)
    assert "on window 64x64" in both.reason  # the crash names the step it happened in
    # Each step keeps the joint verdict: a later job of either one runs what this process ran, without a probe.
    monkeypatch.setenv(FAULT_ENV, "fp32,bf16,bf16-amx-off")
    assert choose_precision("auto", CPU, SMALL, machine=AMX_MACHINE) == both
    assert choose_precision("auto", CPU, LARGE, machine=AMX_MACHINE) == both


def test_a_step_is_the_same_however_its_network_is_written():
    from napari_plantbio_train.models.network import UNet

    model = UNet(**SMALL.network)
    assert Probe(model.spec, (32, 32), 1, "instance").key == SMALL.key
    assert Probe(model.spec, (32, 32), 2, "instance").key != SMALL.key


def test_the_plan_probes_every_network_it_times_before_timing_any(tmp_path, cache, monkeypatch):
    """The planner times its candidates in its own process: each must have run in the probe's format first."""
    from napari_plantbio_train.planning.plan import make_plan, timed_steps
    from napari_plantbio_train.training.setup import plan_job

    monkeypatch.setattr(hardware.Machine, "here", classmethod(lambda cls, device: AMX_MACHINE))
    rng = np.random.default_rng(0)
    image = rng.integers(0, 255, (300, 300), dtype=np.uint8)
    labels = np.zeros((300, 300), np.uint8)
    labels[40:90, 40:90], labels[150:230, 120:200] = 1, 2
    config = TrainConfig(name="planned", mode="instance", dims="2d", base_channels=4, time_limit_min=1)
    steps = timed_steps(config, make_plan(config, image, labels, device=CPU, precision="fp32", measure=False))
    windows = sorted({"x".join(map(str, step.window)) for step in steps})
    assert len(steps) > 1 and len(windows) > 1  # candidates of more than one window: the case to prove
    monkeypatch.setenv(FAULT_ENV, f"bf16@{windows[-1]}")  # the largest window crashes with AMX, as 8x256x256 did
    plan_job(config, image, labels, store=ModelStore(tmp_path / "models"), resume=False, device=CPU, threads=1)
    verdicts = json.loads(cache.read_text())
    assert len(verdicts) == len(steps)  # every candidate the plan timed was probed, and judged alike
    assert {(v["precision"], v["isa_limit"]) for v in verdicts.values()} == {("bf16", AMX_OFF)}
