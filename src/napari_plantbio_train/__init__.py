"""Train, watch and use segmentation networks on electron-microscopy stacks inside napari.

The public API, for scripts and notebooks: ``train`` (a generator of events, as the dock and the command line
run it), ``label_stack`` (auto-labelling, also a generator), ``TrainConfig`` (a job), ``ModelStore`` (the models
folder), ``read`` (the one reader) and ``run_to_end`` (drain a job's events). The names are imported on first use:
the command line, the manifest scan npe2 does at napari start-up and the engine's tests all import this package,
and none of them should pay for (or need) Qt or torch before they use them.

The subpackages, from plain values up: ``job`` (the job, its kinds and events), ``io`` (reading and writing
stacks), ``tools``, ``models`` (network, loss, model folders), ``runtime`` (device, precision), ``evaluation``,
``inference``, ``planning``, ``training``, ``cli``, and ``_widgets`` (the docks, Qt only).
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_PUBLIC = {
    "train": "napari_plantbio_train.training.loop",
    "label_stack": "napari_plantbio_train.inference.label",
    "LabelSettings": "napari_plantbio_train.inference.label",
    "TrainConfig": "napari_plantbio_train.job.config",
    "ConfigError": "napari_plantbio_train.job.config",
    "ModelStore": "napari_plantbio_train.models.store",
    "read": "napari_plantbio_train.io.stacks",
    "run_to_end": "napari_plantbio_train.job.events",
}
__all__ = [*_PUBLIC, "__version__"]


def __getattr__(name: str) -> Any:
    if name in _PUBLIC:
        return getattr(importlib.import_module(_PUBLIC[name]), name)
    raise AttributeError(f"module 'napari_plantbio_train' has no attribute {name!r}")
