"""`make demo`: train a small instance model through the dock widget and save a screenshot of the window.

Run headless with ``xvfb-run -a -s "-screen 0 1600x1000x24" .venv/bin/python docs/demo.py``. It uses a crop of the
real chloroplast stack when ../shared/data is next to the repository, otherwise the plugin's synthetic sample
stack (touching organelles, see synthetic.py), so the demo also works on a fresh clone. The job is limited to about two
minutes so the screenshot shows a curve that has levelled off and a preview that already looks like chloroplasts.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data" / "chloroplast3d"
SCREENSHOT = REPO / "docs" / "images" / "train_widget.png"
CROP = (slice(0, 10), slice(1500, 2012), slice(500, 1012))  # ten sections, 512 x 512 pixels, many chloroplasts
# The voxel size was not recorded; serial sections are much thicker than the in-plane pixel, which is the
# geometry that matters (it makes the network keep flat kernels along z).
SCALE = (50.0, 10.0, 10.0)
TIME_LIMIT_MIN = 2.0
WAIT_SECONDS = 6 * 60  # the time limit plus start-up and a final validation, with room for a busy machine


def load_stack() -> tuple[np.ndarray, np.ndarray, str]:
    if (DATA / "image.tif").is_file() and (DATA / "labels.tif").is_file():
        import tifffile

        pages = range(CROP[0].start, CROP[0].stop)
        image = tifffile.imread(DATA / "image.tif", key=pages)[(slice(None), *CROP[1:])]
        labels = tifffile.imread(DATA / "labels.tif", key=pages)[(slice(None), *CROP[1:])]
        return image, labels, f"chloroplast crop {image.shape} from {DATA}"
    from napari_plantbio_train.io.synthetic import make_stack

    stack = make_stack(shape=(10, 256, 256))  # the sample data of File > Open Sample
    return stack.image, stack.instances, f"synthetic stack {stack.image.shape} (no data at {DATA})"


def main() -> int:
    import napari
    from qtpy.QtCore import QEventLoop, QTimer

    from napari_plantbio_train._widgets.train_widget import TrainWidget
    from napari_plantbio_train.job.events import Finished

    from napari_plantbio_train._widgets.settings import CONFIG_ENV

    # The dock as a new user first sees it: not the form values remembered from this machine's last job.
    os.environ[CONFIG_ENV] = tempfile.mkdtemp(prefix="plantbio-demo-settings-")
    image, labels, source = load_stack()
    print(f"Training on a {source}")
    viewer = napari.Viewer(title="napari-plantbio-train demo", show=True)
    viewer.window.resize(1600, 1000)
    viewer.add_image(image, name="chloroplasts", scale=SCALE)
    truth = viewer.add_labels(labels, name="ground truth", scale=SCALE, opacity=0.35)
    widget = TrainWidget(viewer)
    viewer.window.add_dock_widget(widget, name="Train segmentation model", area="right")

    models_dir = Path(tempfile.mkdtemp(prefix="plantbio-demo-")) / "models"
    widget.form.set_values(
        name=f"chloroplasts-demo-{time.strftime('%Y%m%d-%H%M%S')}", mode="instance", dims="3d",
        iterations=100_000, time_limit_min=TIME_LIMIT_MIN, models_dir=models_dir)  # the rest: the plan's
    if not widget.start():
        print(f"The form was refused: {widget.status.text()}", file=sys.stderr)
        return 1

    loop = QEventLoop()
    widget.worker.finished.connect(loop.quit)
    QTimer.singleShot(WAIT_SECONDS * 1000, loop.quit)
    loop.exec()
    if widget.running:
        widget.stop("demo timeout")
        while widget.running:
            loop.processEvents(QEventLoop.ProcessEventsFlag.AllEvents, 100)
    finished = widget.last_event
    if not isinstance(finished, Finished):
        print(f"Training did not finish: {widget.status.text()}", file=sys.stderr)
        return 1

    # Show the predicted objects over the image, on a middle slice of the held-out block.
    truth.visible = False
    if widget.last_preview is not None:
        viewer.dims.set_current_step(0, image.shape[0] // 2)
    viewer.reset_view()
    for _ in range(20):
        loop.processEvents(QEventLoop.ProcessEventsFlag.AllEvents, 50)
    SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
    viewer.screenshot(str(SCREENSHOT), canvas_only=False, flash=False)
    best = f", best F1@0.5 {finished.best_score:.3f}" if finished.best_score is not None else ""
    print(f"{finished.reason} after {finished.iteration} iterations{best}; model in {finished.model_dir}")
    print(f"Screenshot saved to {SCREENSHOT}")
    viewer.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
