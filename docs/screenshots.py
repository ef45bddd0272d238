"""The quick start's screenshots, taken from a real viewer: open the sample, train, auto-label, evaluate.

    xvfb-run -a -s "-screen 0 1600x1000x24" .venv/bin/python docs/screenshots.py [--minutes 2] [--out DIR]

Everything is driven through the docks' public methods, as a user would click them, on the plugin's own
sample data (nothing to download). The images land in docs/images/quickstart_*.png, which docs/quickstart.md
shows. A test runs this with a few seconds of training so the script keeps working.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

from napari_plantbio_train._widgets.settings import CONFIG_ENV

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "docs" / "images"


def _wait(viewer, done, seconds: float) -> None:
    from qtpy.QtCore import QEventLoop

    loop, end = QEventLoop(), time.monotonic() + seconds
    while not done() and time.monotonic() < end:
        loop.processEvents(QEventLoop.ProcessEventsFlag.AllEvents, 50)
        time.sleep(0.02)
    for _ in range(10):  # let the canvas draw what just changed
        loop.processEvents(QEventLoop.ProcessEventsFlag.AllEvents, 20)


def take(out: Path = OUT, minutes: float = 2.0) -> list[Path]:
    import napari

    from napari_plantbio_train._widgets.evaluate_widget import EvaluateWidget
    from napari_plantbio_train._widgets.label_widget import AutoLabelWidget
    from napari_plantbio_train._widgets.train_widget import TrainWidget
    from napari_plantbio_train.io.synthetic import make_stack

    out.mkdir(parents=True, exist_ok=True)
    shots: list[Path] = []
    viewer = napari.Viewer(title="napari-plantbio-train quick start", show=True)
    viewer.window.resize(1600, 1000)

    def shot(name: str) -> None:
        path = out / f"quickstart_{name}.png"
        viewer.screenshot(str(path), canvas_only=False, flash=False)
        shots.append(path)

    try:
        # 1. File > Open Sample > Synthetic EM organelles
        viewer.open_sample("napari-plantbio-train", "organelles")
        viewer.dims.set_current_step(0, 6)
        _wait(viewer, lambda: True, 0.5)
        shot("1_sample")

        # 2. Train an instance model on it from the dock
        models_dir = Path(tempfile.mkdtemp(prefix="plantbio-quickstart-")) / "models"
        trainer = TrainWidget(viewer)
        train_dock = viewer.window.add_dock_widget(trainer, name="Train segmentation model", area="right")
        trainer.image_picker.value = viewer.layers["organelles EM"]
        trainer.labels_picker.value = viewer.layers["organelles instances"]
        trainer.form.set_values(name="organelles", mode="instance", dims="3d", iterations=100_000,
                                time_limit_min=minutes, models_dir=models_dir)  # the rest as a user gets it
        viewer.layers["organelles classes"].visible = False
        if not trainer.start():
            raise RuntimeError(f"the training dock refused the job: {trainer.status.text()}")
        _wait(viewer, lambda: not trainer.running, minutes * 60 + 180)
        if trainer.running:
            raise RuntimeError("training did not finish in time")
        shot("2_training")
        for layer in list(viewer.layers):
            if "preview" in layer.name:
                viewer.layers.remove(layer)
        viewer.window.remove_dock_widget(train_dock)

        # 3. Auto-label a new stack (another seed: organelles the model has never seen)
        new = make_stack(seed=1)
        x, y, z = new.voxel_size
        for layer in list(viewer.layers):
            layer.visible = False
        image = viewer.add_image(new.image, name="new stack", scale=(z, y, x))
        truth = viewer.add_labels(new.instances, name="new stack truth", scale=(z, y, x), visible=False)
        labeller = AutoLabelWidget(viewer, models_dir=models_dir)
        label_dock = viewer.window.add_dock_widget(labeller, name="Auto-label with a model", area="right")
        labeller.image_picker.value = image
        labeller.select_model("organelles")
        labeller.start()
        _wait(viewer, lambda: not labeller.running, 300)
        shot("3_autolabel")
        viewer.window.remove_dock_widget(label_dock)

        # 4. Evaluate the result against the truth of the new stack
        judge = EvaluateWidget(viewer)
        viewer.window.add_dock_widget(judge, name="Evaluate labels", area="right")
        judge.result_picker.value = viewer.layers["new stack [organelles]"]
        judge.truth_picker.value = truth
        judge.evaluate()
        _wait(viewer, lambda: True, 0.5)
        shot("4_evaluate")
    finally:
        viewer.close()
    return shots


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=2.0, help="training time of step 2")
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()
    # The docks as a new user first sees them: not the form values remembered from this machine's last job.
    os.environ[CONFIG_ENV] = tempfile.mkdtemp(prefix="plantbio-quickstart-settings-")
    for path in take(args.out, args.minutes):
        print(f"saved {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
