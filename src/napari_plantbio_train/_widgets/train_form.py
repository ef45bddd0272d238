"""The training form: the older tool's fields, read into a ``TrainConfig`` and marked where a value is wrong."""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

from qtpy.QtWidgets import (QCheckBox, QComboBox, QDoubleSpinBox, QFormLayout, QLabel, QLineEdit, QSpinBox,
                            QToolButton, QVBoxLayout, QWidget)

from ..job.config import ConfigError, TrainConfig, unsaved_layer
from ..job.kinds import DIMS, MODES
from ..job.voxels import voxel_size_from_scale
from ..models.store import ModelRecord
from ..training.material import INHERITED, continuation
from .common import ModelsFolderField, column, error_label, follow
from .corrections import TouchedOption, auto_labels_of
from .layer_picker import LayerPicker, source_of
from .pairs import ExtraPairs
from .settings import DockSettings, shared_settings
from .versions import ContinueFromBox, next_version_name

if TYPE_CHECKING:
    import napari

# Remembered for the next dock and session (settings.py): the choices a user makes once for their machine and
# material. Not the name (a new job is a new model), nor what comes from the data (layers, voxel size, a parent).
REMEMBERED = ("mode", "dims", "window", "gpus", "workers", "data_workers", "cpu_processes", "lr", "iteration_step",
              "iteration_save", "keep_checkpoints", "iterations", "batch_size", "time_limit_min", "validate_every",
              "base_channels", "depth", "stem_stride", "flat_levels", "contour_width", "painted_slices_only",
              "ignore_value", "touched_margin")

# Shown beside each field: the older tool's guide, shortened.
TIPS = {
    "image": "The raw images to learn from; later stacks to auto-label should look like these.",
    "labels": "Labels matching the image: one value per class (semantic) or one id per object (instance).",
    "mode": "semantic: one value per class of organelle. instance: tells touching objects of one kind apart.",
    "dims": "3d treats the stack as one volume; 2d treats every slice as a separate image.",
    "window": "Size of the training window, z,y,x in 3d or y,x in 2d (e.g. 8,256,256). Empty: chosen for you.",
    "gpus": "GPUs to train on; auto uses one when CUDA is present, 0 forces the CPU.",
    "workers": "CPU threads for training on the CPU; no more than the machine's cores.",
    "data_workers": "Processes drawing training windows; auto: the #CPU field's number on a GPU, none on a CPU "
                    "(there the network needs every core).",
    "cpu_processes": "On the CPU: train as this many data-parallel processes, each on its own windows with the "
                     "#CPU threads shared among them. More than 1 runs the job as a separate program that this "
                     "dock follows; 1 trains inside napari.",
    "lr": "Base learning rate: higher learns faster but less stably (typical 1e-4 to 3e-3).",
    "iteration_step": "Batches accumulated into one optimiser step (a larger effective batch).",
    "iteration_save": "Keep a checkpoint every this many iterations.",
    "keep_checkpoints": "Periodic checkpoints kept on disk, the newest ones; the last and the best are always "
                        "kept besides. Bounds the disk a long job uses.",
    "iterations": "Total training iterations; too few learn nothing, too many over-fit.",
    "batch_size": "Windows processed together per step; lower it if memory runs out.",
    "name": "The model's name in the models folder; each model needs a unique name.",
    "time_limit_min": "Stop (with a checkpoint) after this many minutes even if iterations remain; none: no limit.",
    "models_dir": "Folder that holds one sub-folder per trained model.",
    "validate_every": "Score the held-out block (and refresh the preview layers) every this many iterations.",
    "base_channels": "Width of the network's first level; smaller trains faster, larger can learn more.",
    "depth": "Number of downsampling levels of the U-Net.",
    "contour_width": "Instance mode: width in pixels of the band learned between touching objects.",
    "painted_slices_only": "Train on a few painted slices: slices with no label at all add nothing to the loss.",
    "ignore_value": "A label value painted where the labels say nothing (left out of the loss); none: every "
                    "value is a label.",
    "stem_stride": "Run the network at 1/2 or 1/4 of the in-plane resolution: much faster on a CPU, coarser edges. "
                   "auto: the plan measures the candidates here and keeps the most detailed one the time allows.",
    "flat_levels": "3d: how many upper levels convolve in-plane only (cheap; right for thick sections). auto: the "
                   "plan's choice.",
    "init_from": "Continue from a trained model: a new version that starts from its weights, with its network, "
                 "voxel size and classes, a lower learning rate and a short schedule.",
    "touched_only": "Only the corrected regions of the first labels (and a margin around them) count in training.",
    "in_process": "By default the job runs as a separate program that this dock follows: if it crashes, napari and "
                  "your layers are untouched. Inside napari a job starts a few seconds sooner.",
}
# What a parent's job fills in when continuing from it. Hardware (#GPU, #CPU) is left as it is: it belongs to this
# machine, and a parent trained on a GPU cluster must not ask for GPUs this machine lacks.
AUTO = "auto"
PREFILLED = ("name", "mode", "dims", "voxel_size", "window", "lr", "iteration_step", "iteration_save",
             "keep_checkpoints", "iterations", "batch_size", "time_limit_min", "validate_every", "base_channels", "depth", "stem_stride",
             "flat_levels", "contour_width", "painted_slices_only", "ignore_value")


def _spin(minimum: int, maximum: int, value: int, special: str | None = None) -> QSpinBox:
    box = QSpinBox()
    box.setRange(minimum, maximum)
    box.setValue(value)
    if special:
        box.setSpecialValueText(special)
    return box


class TrainForm(QWidget):
    """Each field sits in a row with a red message label under it, addressed by the ``TrainConfig`` field name."""

    def __init__(self, viewer: napari.Viewer, parent: QWidget | None = None,
                 settings: DockSettings | None = None) -> None:
        super().__init__(parent)
        import napari.layers

        defaults = TrainConfig(name="")
        self.image = LayerPicker(viewer, napari.layers.Image)
        self.labels = LayerPicker(viewer, napari.layers.Labels)
        self.mode = QComboBox()
        self.mode.addItems(MODES)
        self.mode.setCurrentText(defaults.mode)
        self.dims = QComboBox()
        self.dims.addItems(DIMS)
        self.dims.setCurrentText(defaults.dims)
        self.voxel = []
        for _ in "xyz":
            box = QDoubleSpinBox()
            box.setRange(0.0, 1e6)
            box.setDecimals(3)
            box.setValue(1.0)
            self.voxel.append(box)
        self.window = QLineEdit()
        self.window.setPlaceholderText("auto")
        self.gpus = _spin(-1, 64, -1, special="auto")
        self.workers = _spin(1, 1024, min(defaults.workers, 64))
        self.data_workers = _spin(-1, 64, -1, special="auto")
        self.cpu_processes = _spin(1, 256, defaults.cpu_processes)
        self.lr = QLineEdit()
        self.lr.setPlaceholderText("auto")
        self.iteration_step = _spin(1, 1024, defaults.iteration_step)
        self.iteration_save = _spin(1, 10_000_000, defaults.iteration_save)
        self.keep_checkpoints = _spin(1, 10_000, defaults.keep_checkpoints)
        self.iterations = _spin(1, 10_000_000, defaults.iterations)
        self.batch_size = _spin(0, 1024, 0, special="auto")
        self.name = QLineEdit()
        self.name.setPlaceholderText("e.g. chloroplasts-3d")
        self.time_limit = QDoubleSpinBox()
        self.time_limit.setRange(0.0, 1e6)
        self.time_limit.setDecimals(1)
        self.time_limit.setSpecialValueText("none")
        # One folder for every dock (settings.py): this field edits the shared setting and follows it.
        self.dock_settings = settings or shared_settings()
        self.models_field = ModelsFolderField(self.dock_settings)
        self.models_dir = self.models_field.edit
        # 0 (or "auto", -1 where 0 is a value) leaves the field to the plan, which says what it chose.
        self.validate_every = _spin(0, 10_000_000, 0, special="auto")
        self.base_channels = _spin(0, 256, 0, special="auto")
        self.depth = _spin(0, 8, 0, special="auto")
        self.contour_width = _spin(0, 64, 0, special="auto")
        self.stem_stride = QComboBox()
        self.stem_stride.addItems([AUTO, "1", "2", "4"])
        self.flat_levels = _spin(-1, 8, -1, special="auto")
        self.painted_slices_only = QCheckBox("slices without labels are unpainted, not background")
        self.ignore_value = _spin(-1, 2**31 - 1, -1, special="none")
        # Not a field of the job: where this dock runs it. Off by default, so a crash can never close napari.
        self.in_process = QCheckBox("in napari's own process (a crash there would close napari)")
        self.continue_from = ContinueFromBox(self.models_folder())
        self.pairs = ExtraPairs(viewer)
        self.touched = TouchedOption(defaults.touched_margin)
        self._suggested_name = ""

        self._errors: dict[str, QLabel] = {}
        self._form = QFormLayout()
        self._form.setFieldGrowthPolicy(QFormLayout.FieldGrowthPolicy.AllNonFixedFieldsGrow)
        self._form.setContentsMargins(0, 0, 0, 0)
        rows: list[tuple[str, str, QWidget]] = [
            ("Continue from", "init_from", self.continue_from),
            ("Image stack", "image", self.image),
            ("Labels", "labels", self.labels),
            ("", "", self.pairs),
            ("Corrections", "touched_only", self.touched),
            ("Mode", "mode", self.mode),
            ("2D/3D", "dims", self.dims),
            ("X nm/pixel", "", self.voxel[0]),
            ("Y nm/pixel", "", self.voxel[1]),
            ("Z nm/pixel", "voxel_size", self.voxel[2]),
            ("Window size", "window", self.window),
            ("#GPU", "gpus", self.gpus),
            ("#CPU", "workers", self.workers),
            ("Base LR", "lr", self.lr),
            ("Iteration step", "iteration_step", self.iteration_step),
            ("Iteration save", "iteration_save", self.iteration_save),
            ("Iteration total", "iterations", self.iterations),
            ("Samples per batch", "batch_size", self.batch_size),
            ("Name model as", "name", self.name),
            ("Time limit (min)", "time_limit_min", self.time_limit),
            ("Models folder", "models_dir", self.models_field),
        ]
        advanced = [
            ("Validate every", "validate_every", self.validate_every),
            ("Checkpoints kept", "keep_checkpoints", self.keep_checkpoints),
            ("Window processes", "data_workers", self.data_workers),
            ("CPU processes", "cpu_processes", self.cpu_processes),
            ("Network width", "base_channels", self.base_channels),
            ("Network depth", "depth", self.depth),
            ("Stem stride", "stem_stride", self.stem_stride),
            ("In-plane levels", "flat_levels", self.flat_levels),
            ("Contour width", "contour_width", self.contour_width),
            ("Partial labels", "painted_slices_only", self.painted_slices_only),
            ("Ignore label value", "ignore_value", self.ignore_value),
            ("Train", "in_process", self.in_process),
        ]
        for label, field, widget in rows:
            self._addrow(self._form, label, field, widget)
        self._errors["touched_margin"] = self._errors["auto_labels"] = self._errors["touched_only"]
        self.advanced = QWidget()
        advanced_form = QFormLayout(self.advanced)
        advanced_form.setContentsMargins(0, 0, 0, 0)
        for label, field, widget in advanced:
            self._addrow(advanced_form, label, field, widget)
        self.advanced.setVisible(False)
        toggle = QToolButton()
        toggle.setText("Advanced")
        toggle.setCheckable(True)
        toggle.setStyleSheet("QToolButton { border: none; }")
        toggle.toggled.connect(self.advanced.setVisible)
        toggle.toggled.connect(lambda shown: toggle.setText("Advanced ▾" if shown else "Advanced ▸"))
        toggle.setText("Advanced ▸")
        self.advanced_toggle = toggle

        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addLayout(self._form)
        layout.addWidget(toggle)
        layout.addWidget(self.advanced)

        self.image.currentIndexChanged.connect(self._defaults_from_image)
        self._defaults_from_image()
        follow(self.dock_settings.models_dir_changed, self.continue_from, "set_root")
        self.continue_from.parent_changed.connect(self._on_parent_changed)
        self.continue_from.models_changed.connect(self._on_models_changed)
        self._recall()

    # ----- remembered values ----------------------------------------------------------------------------------
    def remember(self) -> dict[str, Any]:
        """Keep the form's values (``REMEMBERED``) for the next dock, in this session and the next; the training
        dock calls it when a job starts. Returns what was kept."""
        config, _ = self.read()
        values = {field: _plain(getattr(config, field)) for field in REMEMBERED}
        self.dock_settings.remember_form(values)
        return values

    def _recall(self) -> None:
        """Fill the fields from the remembered values; one a newer or older version cannot take is skipped."""
        for field, value in self.dock_settings.form_values().items():
            if field in REMEMBERED:
                try:
                    self.set_values(**{field: value})
                except (KeyError, TypeError, ValueError):
                    continue

    def _addrow(self, form: QFormLayout, label: str, field: str, widget: QWidget) -> None:
        """The field and, under it, a red message that stays hidden until the field is wrong."""
        if not field:
            form.addRow(label, widget)
            return
        tip = TIPS.get(field)
        if tip:
            widget.setToolTip(tip)
        error = error_label()
        self._errors[field] = error
        form.addRow(label, column(widget, error))

    # ----- defaults from the data -----------------------------------------------------------------------------
    def _defaults_from_image(self, *_args: Any) -> None:
        """The image layer's scale is the best guess of its voxel size; its dimensionality of 2D or 3D. A continued
        model keeps its parent's: the network was built for those."""
        layer = self.image.value
        if layer is None or self.continue_from.record is not None:
            return
        x, y, z = voxel_size_from_scale(layer.scale)
        self.voxel[0].setValue(x)
        self.voxel[1].setValue(y)
        if layer.ndim >= 3 and not getattr(layer, "rgb", False):
            self.voxel[2].setValue(z)
            self.dims.setCurrentText("3d")
        elif layer.ndim == 2:
            self.dims.setCurrentText("2d")

    # ----- continuing from a model ----------------------------------------------------------------------------
    def inherited_widgets(self) -> dict[str, list[QWidget]]:
        """The fields a continued model takes from its parent (``train.INHERITED``), by field name."""
        widgets = {"mode": [self.mode], "dims": [self.dims], "voxel_size": self.voxel,
                   "base_channels": [self.base_channels], "depth": [self.depth], "stem_stride": [self.stem_stride],
                   "flat_levels": [self.flat_levels], "contour_width": [self.contour_width]}
        return {field: widgets[field] for field in INHERITED}  # a KeyError here: a new inherited field to show

    def _on_parent_changed(self) -> None:
        """Prefill the form with the parent's job and the fine-tuning defaults, and lock what it inherits; back
        at "(new model)" the locked fields are the user's again."""
        record = self.continue_from.record
        for widgets in self.inherited_widgets().values():
            for widget in widgets:
                widget.setEnabled(record is None)
        if record is None:
            self._suggested_name = ""
            self._defaults_from_image()
            return
        self._suggested_name = next_version_name(record.name, self.continue_from.names())
        self.set_values(**_form_values(continuation(record, self._suggested_name)))

    def _on_models_changed(self) -> None:
        """A model just saved under the suggested name (this dock's last job) makes way for the next version; not
        while that job still trains (the form then shows the job as it runs)."""
        record, suggested, taken = self.continue_from.record, self._suggested_name, self.continue_from.names()
        if not self.isEnabled() or record is None or not suggested or suggested not in taken:
            return
        if self.name.text().strip() == suggested:  # a name the user typed is theirs to change
            self._suggested_name = next_version_name(record.name, taken)
            self.name.setText(self._suggested_name)

    # ----- reading and writing --------------------------------------------------------------------------------
    def models_folder(self) -> Path:
        """The folder in the field, made the setting of every dock (a job reads it: the docks must agree)."""
        self.dock_settings.set_models_dir(self.models_dir.text())
        return self.dock_settings.models_dir

    def read(self) -> tuple[TrainConfig, list[ConfigError]]:
        """The form as a config, plus the fields that could not even be parsed (those keep their defaults)."""
        errors: list[ConfigError] = []
        window = _parse_window(self.window.text(), errors)
        lr = None
        if self.lr.text().strip() and self.lr.text().strip().lower() != AUTO:
            try:
                lr = float(self.lr.text())
                if not math.isfinite(lr):
                    raise ValueError
            except ValueError:
                errors.append(ConfigError("lr", f"{self.lr.text()!r} is not a number (e.g. 0.001 or 1e-3), or "
                                                "empty for the plan to choose"))
                lr = None
        image, labels = self.image.value, self.labels.value
        extra_images, extra_labels = self.pairs.names()
        parent: ModelRecord | None = self.continue_from.record
        corrected = auto_labels_of(labels)
        config = TrainConfig(
            name=self.name.text().strip(),
            mode=self.mode.currentText(),  # type: ignore[arg-type]
            dims=self.dims.currentText(),  # type: ignore[arg-type]
            image=source_of(image) if image is not None else None,
            labels=source_of(labels) if labels is not None else None,
            voxel_size=tuple(box.value() for box in self.voxel),  # type: ignore[arg-type]
            window=window,
            gpus=None if self.gpus.value() < 0 else self.gpus.value(),
            workers=self.workers.value(),
            cpu_processes=self.cpu_processes.value(),
            data_workers=None if self.data_workers.value() < 0 else self.data_workers.value(),
            lr=lr,
            iteration_step=self.iteration_step.value(),
            iteration_save=self.iteration_save.value(),
            keep_checkpoints=self.keep_checkpoints.value(),
            iterations=self.iterations.value(),
            batch_size=self.batch_size.value() or None,
            time_limit_min=self.time_limit.value() or None,
            validate_every=self.validate_every.value() or None,
            base_channels=self.base_channels.value() or None,
            depth=self.depth.value() or None,
            stem_stride=None if self.stem_stride.currentText() == AUTO else int(self.stem_stride.currentText()),
            flat_levels=None if self.flat_levels.value() < 0 else self.flat_levels.value(),
            contour_width=self.contour_width.value() or None,
            painted_slices_only=self.painted_slices_only.isChecked(),
            ignore_value=None if self.ignore_value.value() < 0 else self.ignore_value.value(),
            init_from=parent.name if parent is not None else None,
            extra_images=extra_images,
            extra_labels=extra_labels,
            pair_weights=self.pairs.weights(),
            touched_only=self.touched.checkbox.isChecked(),
            touched_margin=self.touched.margin.value(),
            auto_labels=unsaved_layer(corrected[0]) if corrected is not None else None,
        )
        return config, errors

    def set_values(self, **values: Any) -> None:
        """Fill fields by ``TrainConfig`` name (plus ``models_dir``), e.g. from a saved model's config.json."""
        setters = {
            "name": lambda v: self.name.setText(str(v)),
            "mode": self.mode.setCurrentText,
            "dims": self.dims.setCurrentText,
            "voxel_size": lambda v: [box.setValue(float(s)) for box, s in zip(self.voxel, v or (1.0, 1.0, 1.0))],
            "window": lambda v: self.window.setText("" if v is None else ",".join(str(int(w)) for w in v)),
            "gpus": lambda v: self.gpus.setValue(-1 if v is None else int(v)),
            "workers": self.workers.setValue,
            "data_workers": lambda v: self.data_workers.setValue(-1 if v is None else int(v)),
            "cpu_processes": lambda v: self.cpu_processes.setValue(int(v)),
            "lr": lambda v: self.lr.setText("" if v is None else f"{v:g}" if isinstance(v, float) else str(v)),
            "iteration_step": self.iteration_step.setValue,
            "iteration_save": self.iteration_save.setValue,
            "keep_checkpoints": self.keep_checkpoints.setValue,
            "iterations": self.iterations.setValue,
            "batch_size": lambda v: self.batch_size.setValue(int(v or 0)),
            "time_limit_min": lambda v: self.time_limit.setValue(float(v or 0.0)),
            "validate_every": lambda v: self.validate_every.setValue(int(v or 0)),
            "base_channels": lambda v: self.base_channels.setValue(int(v or 0)),
            "depth": lambda v: self.depth.setValue(int(v or 0)),
            "stem_stride": lambda v: self.stem_stride.setCurrentText(AUTO if v is None else str(v)),
            "flat_levels": lambda v: self.flat_levels.setValue(-1 if v is None else int(v)),
            "contour_width": lambda v: self.contour_width.setValue(int(v or 0)),
            "painted_slices_only": lambda v: self.painted_slices_only.setChecked(bool(v)),
            "ignore_value": lambda v: self.ignore_value.setValue(-1 if v is None else int(v)),
            "models_dir": lambda v: (self.models_dir.setText(str(v)), self.dock_settings.set_models_dir(v)),
            "image": lambda v: setattr(self.image, "value", v),
            "labels": lambda v: setattr(self.labels, "value", v),
            "init_from": self.continue_from.select,
            "touched_only": lambda v: self.touched.checkbox.setChecked(bool(v)),
            "touched_margin": self.touched.margin.setValue,
        }
        unknown = sorted(set(values) - set(setters))
        if unknown:
            raise KeyError(f"the form has no field {unknown[0]!r}; fields: {', '.join(sorted(setters))}")
        for field, value in values.items():
            setters[field](value)

    # ----- messages -------------------------------------------------------------------------------------------
    def show_errors(self, errors: list[ConfigError]) -> list[ConfigError]:
        """Put each message under its field; return those about fields the form does not show."""
        elsewhere = []
        for error in errors:
            label = self._errors.get(error.field) or self.pairs.error_label(error.field)
            if label is None:
                elsewhere.append(error)
                continue
            label.setText(f"{label.text()}\n{error.message}" if label.text() else error.message)
            label.setVisible(True)
            if error.field in {"validate_every", "keep_checkpoints", "data_workers", "cpu_processes", "base_channels", "depth",
                               "stem_stride", "flat_levels", "contour_width", "painted_slices_only", "ignore_value"}:
                self.advanced_toggle.setChecked(True)
        return elsewhere

    def clear_errors(self) -> None:
        for label in self._errors.values():
            label.clear()
            label.setVisible(False)
        self.pairs.clear_errors()

    def error_text(self, field: str) -> str:
        """The message shown under ``field`` ('' when none): what the tests and the user read."""
        label = self._errors.get(field) or self.pairs.error_label(field)
        if label is None:
            raise KeyError(f"the form shows no field {field!r}")
        return label.text()


def _form_values(config: TrainConfig) -> dict[str, Any]:
    """The job's values that the form shows and a parent fills in: not the data (new for a new version), not
    this machine's hardware."""
    return {field: getattr(config, field) for field in PREFILLED}


def _parse_window(text: str, errors: list[ConfigError]) -> tuple[int, ...] | None:
    cleaned = text.strip().strip("()[]")
    if not cleaned:
        return None
    parts = [p for p in cleaned.replace("x", ",").replace(" ", ",").split(",") if p]
    try:
        return tuple(int(p) for p in parts)
    except ValueError:
        errors.append(ConfigError("window", f"{text!r} is not whole numbers separated by commas, e.g. 8,256,256"))
        return None



def _plain(value: Any) -> Any:
    """A JSON value: tuples (a window) as lists."""
    return list(value) if isinstance(value, tuple) else value
