"""Does training from napari cost speed, and does the viewer stay responsive?

Runs the same short instance-3D job through the command line (``napari-plantbio-train train`` as a program of
its own, followed through ``--events jsonl``) and through the training dock, which runs the same program as a
child process by default, alternating rounds, on one virtual display. Reports, for each: iterations per second
(target: the dock at least 0.97 of the command line) and seconds from the start (the command's launch, the
Train click) to the first loss point (target: the dock under 5 s more); and, while the dock trains, the event
loop's worst delay: a 10 ms QTimer records the gaps between its ticks, and any gap beyond 10 ms is time the GUI
could not react (target: under 50 ms). Each round runs the dock twice: with the view preview at each
validation (its default, which spends up to a tenth of the training time predicting where the user looks) and
without.
``INPROCESS=1`` adds a round of the dock training inside napari's process. ``TRACE_STALLS=1`` names what the GUI
thread was doing during each long gap: a watchdog thread samples the GUI thread's Python stack whenever the
timer is more than 40 ms late (a gap whose samples show only the event loop waiting was spent outside Python:
Qt's own painting, or the process not being scheduled).

Run it alone, on a virtual display (results are appended to benchmarks/results/widget_responsiveness.txt):
    xvfb-run -a -s "-screen 0 1600x1000x24" .venv/bin/python benchmarks/widget_responsiveness.py
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from collections import Counter
from pathlib import Path

import numpy as np
import tifffile

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _results import append  # noqa: E402

from napari_plantbio_train.job.events import Progress  # noqa: E402
from napari_plantbio_train.runtime.hardware import cpu_model  # noqa: E402

LINES: list[str] = []  # what the run printed, appended to the results file at its end


def say(line: str) -> None:
    LINES.append(line)
    print(line, flush=True)

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "chloroplast3d"
ITERATIONS = 80
JOB = dict(mode="instance", dims="3d", voxel_size=(5.0, 5.0, 50.0), window=(2, 256, 256), stem_stride=2,
           base_channels=16, depth=4, batch_size=4, lr=2e-3, validate_every=40, iteration_save=10_000,
           iterations=ITERATIONS)
TICK_MS = 10
STALL_MS = 40


class StallTracer:
    """Samples the GUI thread's stack from a second thread while the GUI's timer is late."""

    def __init__(self) -> None:
        self.heartbeat = time.perf_counter()
        self.samples: list[tuple[float, str]] = []  # (time, innermost frames of our code or the library's)
        self._main = threading.main_thread().ident
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    def _watch(self) -> None:
        while not self._stop.wait(0.01):
            now = time.perf_counter()
            if (now - self.heartbeat) * 1000 < STALL_MS:
                continue
            frame = sys._current_frames().get(self._main)
            if frame is None:
                continue
            stack = traceback.extract_stack(frame)
            frames = [f"{Path(f.filename).name}:{f.name}" for f in stack[-6:]]
            self.samples.append((now, " < ".join(reversed(frames))))

    def during(self, start: float, end: float) -> list[str]:
        counts = Counter(stack for t, stack in self.samples if start <= t <= end)
        return [f"{n}x {stack}" for stack, n in counts.most_common(3)]


def load() -> tuple[np.ndarray, np.ndarray]:
    pages = range(0, 10)
    image = tifffile.imread(DATA / "image.tif", key=pages)[:, 1300:2068, 400:1168]
    labels = tifffile.imread(DATA / "labels.tif", key=pages)[:, 1300:2068, 400:1168]
    return image, labels


def rate(stamps: list[float]) -> float:
    """Iterations per second between the first and the last progress event (start-up excluded)."""
    return (len(stamps) - 1) / (stamps[-1] - stamps[0])


def run_cli(image_path: Path, labels_path: Path, models_dir: Path, tag: str) -> tuple[float, float]:
    """(iterations per second, seconds from launch to the first loss) of the command line as a program."""
    command = [sys.executable, "-m", "napari_plantbio_train.cli", "train", "--image", str(image_path), "--labels",
               str(labels_path), "--name", f"cli-{tag}", "--models-dir", str(models_dir), "--events", "jsonl",
               "--workers", str(os.cpu_count() or 1)]
    for key, value in JOB.items():
        flag = "--" + key.replace("_", "-")
        if key == "voxel_size":
            command += [flag, *(str(v) for v in value)]
        elif key == "window":
            command += [flag, ",".join(str(v) for v in value)]
        else:
            command += [flag, str(value)]
    launched = time.perf_counter()
    stamps = []
    with subprocess.Popen(command, stdout=subprocess.PIPE, text=True) as process:
        for line in process.stdout:
            if line.startswith('{"event": "progress"'):
                stamps.append(time.perf_counter())
    return rate(stamps), stamps[0] - launched


def run_widget(viewer, image_layer, labels_layer, models_dir: Path, tag: str,
               in_process: bool = False, live: bool = True) -> tuple[float, float, list[float]]:
    from qtpy.QtCore import QEventLoop, QTimer

    from napari_plantbio_train._widgets.train_widget import TrainWidget

    widget = TrainWidget(viewer)
    dock = viewer.window.add_dock_widget(widget, name=f"train {tag}", area="right")
    widget.image_picker.value, widget.labels_picker.value = image_layer, labels_layer
    widget.form.set_values(name=f"widget-{tag}", workers=os.cpu_count() or 1, models_dir=models_dir,
                           **{k: v for k, v in JOB.items()})
    widget.form.in_process.value = in_process
    widget.view_preview.live.setChecked(live)  # the view preview at each validation (on: the dock's default)
    stamps: list[float] = []
    gaps: list[float] = []
    last_tick = [time.perf_counter()]
    seen: list[tuple[float, str]] = []  # when each kind of event reached the GUI thread, to place the worst gaps
    worst: list[tuple[float, float]] = []  # (gap ms, time it ended)

    tracer = StallTracer() if os.environ.get("TRACE_STALLS") else None

    def tick() -> None:
        now = time.perf_counter()
        if tracer is not None:
            tracer.heartbeat = now
        gaps.append((now - last_tick[0]) * 1000.0 - TICK_MS)
        worst.append((gaps[-1], now))
        last_tick[0] = now

    timer = QTimer()
    timer.setInterval(TICK_MS)
    timer.timeout.connect(tick)
    clicked = time.perf_counter()
    if not widget.start():
        raise RuntimeError(f"the widget refused the job: {widget.status.text()}")
    widget.worker.yielded.connect(lambda e: stamps.append(time.perf_counter()) if isinstance(e, Progress) else None)
    widget.worker.yielded.connect(lambda e: seen.append((time.perf_counter(), type(e).__name__))
                                  if not isinstance(e, Progress) or e.iteration in (1, 2) else None)
    began = time.perf_counter()
    loop = QEventLoop()
    widget.worker.finished.connect(loop.quit)
    timer.start()
    if tracer is not None:
        tracer.start()
    loop.exec()
    timer.stop()
    if tracer is not None:
        tracer.stop()
    viewer.window.remove_dock_widget(dock)
    for gap, end in sorted(worst[5:], reverse=True)[:4]:  # where the worst gaps fell, beside the events around them
        near = [f"{name}@{(t - began):.2f}s" for t, name in seen if end - gap / 1000 - 0.5 <= t <= end + 0.1]
        say(f"    gap {gap:.0f} ms ending at {end - began:.2f} s; events near: {', '.join(near) or '-'}")
        if tracer is not None:
            for line in tracer.during(end - gap / 1000, end) or ["no sample: the GUI thread held the GIL"]:
                say(f"      {line}")
    return rate(stamps), stamps[0] - clicked, gaps[5:]  # the first ticks include the job's start in the GUI


def main() -> int:
    if not (DATA / "image.tif").exists():
        print(f"the real data is not at {DATA}", file=sys.stderr)
        return 1
    import napari

    image, labels = load()
    models_dir = Path(tempfile.mkdtemp(prefix="plantbio-responsive-"))
    image_path, labels_path = models_dir / "image.npy", models_dir / "labels.npy"
    np.save(image_path, image)
    np.save(labels_path, labels)
    viewer = napari.Viewer(show=True)
    image_layer = viewer.add_image(image, name="image", scale=(50, 5, 5))
    labels_layer = viewer.add_labels(labels, name="labels", scale=(50, 5, 5))
    load_before = os.getloadavg()
    cli_rates, widget_rates, all_gaps, cli_first, widget_first, quiet_rates = [], [], [], [], [], []
    rounds = int(os.environ.get("ROUNDS", "2"))
    for round_ in range(rounds):
        cli_rate, first = run_cli(image_path, labels_path, models_dir, str(round_))
        cli_rates.append(cli_rate)
        cli_first.append(first)
        widget_rate, first, gaps = run_widget(viewer, image_layer, labels_layer, models_dir, str(round_))
        widget_rates.append(widget_rate)
        widget_first.append(first)
        all_gaps.extend(gaps)
        quiet_rate, _, quiet_gaps = run_widget(viewer, image_layer, labels_layer, models_dir, f"{round_}-quiet",
                                               live=False)
        quiet_rates.append(quiet_rate)
        all_gaps.extend(quiet_gaps)
        say(f"round {round_}: cli {cli_rates[-1]:.3f} it/s (first loss {cli_first[-1]:.1f} s), dock "
            f"{widget_rate:.3f} it/s (first loss {first:.1f} s after Train), worst event-loop delay "
            f"{max(gaps):.0f} ms; dock without live view previews {quiet_rate:.3f} it/s, worst delay "
            f"{max(quiet_gaps):.0f} ms")
    inside = None
    if os.environ.get("INPROCESS"):
        inside_rate, inside_first, inside_gaps = run_widget(viewer, image_layer, labels_layer, models_dir, "inside",
                                                            in_process=True)
        inside = {"it_per_s": round(inside_rate, 3), "first_loss_s": round(inside_first, 1),
                  "worst_delay_ms": round(max(inside_gaps), 1)}
    viewer.close()
    result = {
        "iterations_per_run": ITERATIONS, "window": list(JOB["window"]), "batch_size": JOB["batch_size"],
        "cli_it_per_s": [round(r, 3) for r in cli_rates], "widget_it_per_s": [round(r, 3) for r in widget_rates],
        "widget_over_cli": round(statistics.mean(widget_rates) / statistics.mean(cli_rates), 3),
        "widget_without_live_view_it_per_s": [round(r, 3) for r in quiet_rates],
        "widget_without_live_view_over_cli": round(statistics.mean(quiet_rates) / statistics.mean(cli_rates), 3),
        "cli_first_loss_s": [round(v, 1) for v in cli_first], "widget_first_loss_s": [round(v, 1) for v in widget_first],
        "dock_in_napari_process": inside,
        "event_loop_worst_delay_ms": round(max(all_gaps), 1),
        "event_loop_p99_delay_ms": round(float(np.percentile(all_gaps, 99)), 1),
        "load_before": [round(v, 2) for v in load_before], "load_after": [round(v, 2) for v in os.getloadavg()],
    }
    say(json.dumps(result))
    header = (f"=== {time.strftime('%Y-%m-%dT%H:%M:%S')} widget_responsiveness on {cpu_model()} "
              f"(ROUNDS={rounds}{', TRACE_STALLS' if os.environ.get('TRACE_STALLS') else ''})")
    append("widget_responsiveness", [header, *LINES])
    return 0


if __name__ == "__main__":
    sys.exit(main())
