"""The training form: the older tool's fields, read into a ``TrainConfig`` and marked where a value is wrong."""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, Any, get_type_hints

from magicgui.widgets import CheckBox, ComboBox, Container, FloatSpinBox, Label, LineEdit, create_widget
from magicgui.widgets.bases import ValueWidget
from qtpy.QtWidgets import QFormLayout, QLabel, QSizePolicy, QToolButton, QVBoxLayout, QWidget

from ..job.config import ConfigError, TrainConfig, unsaved_layer
from ..job.voxels import voxel_size_from_scale
from ..models.store import ModelRecord
from ..training.material import INHERITED, continuation
from ..training.rehearsal import REHEARSE_SHARE
from .common import ERROR_STYLE, ModelsFolderField, column, error_label, follow
from .corrections import TouchedOption, auto_labels_of
from .layer_picker import follow_layers, layer_choice, reset_keeping_pick, source_of
from .pairs import ExtraPairs
from .settings import DockSettings, shared_settings
from .versions import ContinueFromBox, next_version_name

if TYPE_CHECKING:
    import napari

# Remembered for the next dock and session (settings.py): the choices a user makes once for their machine and
# material. Not the name (a new job is a new model), nor what comes from the data (layers, voxel size, a parent,
# the window and the contour width: a 2x256x256 window remembered from one stack refused the next, 256 pixels high).
REMEMBERED = ("mode", "dims", "gpus", "workers", "data_workers", "cpu_processes", "lr", "iteration_step",
              "iteration_save", "keep_checkpoints", "iterations", "batch_size", "time_limit_min", "validate_every",
              "base_channels", "depth", "stem_stride", "flat_levels", "painted_slices_only",
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


# Optional whole-number fields: a spin box whose lowest value means None ("auto": the plan's choice, or "none").
# magicgui's int spin box cannot show a word for a value, so these are its float spin box showing no decimals.
OPTIONAL_INTS: dict[str, tuple[int, int, str]] = {
    "gpus": (-1, 64, "auto"), "data_workers": (-1, 64, "auto"), "batch_size": (0, 1024, "auto"),
    "validate_every": (0, 10_000_000, "auto"), "base_channels": (0, 256, "auto"), "depth": (0, 8, "auto"),
    "flat_levels": (-1, 8, "auto"), "contour_width": (0, 64, "auto"), "ignore_value": (-1, 2**31 - 1, "none")}
# Whole-number fields that always hold a value: magicgui's widget for the field's type (int), bounded.
INTS: dict[str, tuple[int, int]] = {
    "workers": (1, 1024), "cpu_processes": (1, 256), "iteration_step": (1, 1024), "iteration_save": (1, 10_000_000),
    "keep_checkpoints": (1, 10_000), "iterations": (1, 10_000_000)}
# Label, field (the TrainConfig name its errors carry), in the order shown; the x and y voxel boxes have no field
# of their own: a voxel size message goes under z.
MAIN_ROWS = (("Mode", "mode"), ("2D/3D", "dims"), ("X nm/pixel", ""), ("Y nm/pixel", ""),
             ("Z nm/pixel", "voxel_size"), ("Window size", "window"), ("#GPU", "gpus"), ("#CPU", "workers"),
             ("Base LR", "lr"), ("Iteration step", "iteration_step"), ("Iteration save", "iteration_save"),
             ("Iteration total", "iterations"), ("Samples per batch", "batch_size"), ("Name model as", "name"),
             ("Time limit (min)", "time_limit_min"))
ADVANCED_ROWS = (("Validate every", "validate_every"), ("Checkpoints kept", "keep_checkpoints"),
                 ("Window processes", "data_workers"), ("CPU processes", "cpu_processes"),
                 ("Network width", "base_channels"), ("Network depth", "depth"), ("Stem stride", "stem_stride"),
                 ("In-plane levels", "flat_levels"), ("Contour width", "contour_width"),
                 ("Partial labels", "painted_slices_only"), ("Ignore label value", "ignore_value"),
                 ("Train", "in_process"))
ADVANCED = {field for _, field in ADVANCED_ROWS}


def _optional_int(minimum: int, maximum: int, word: str) -> FloatSpinBox:
    box = FloatSpinBox(value=minimum, min=minimum, max=maximum, step=1)
    box.native.setDecimals(0)
    box.native.setSpecialValueText(word)
    return box


def _text(placeholder: str) -> LineEdit:
    edit = LineEdit(value="")
    edit.native.setPlaceholderText(placeholder)
    return edit


def _error() -> Label:
    """A red message under a field, hidden until the field is wrong; wrapped, so a long one is never cut off."""
    label = Label(value="")
    label.native.setWordWrap(True)
    label.native.setStyleSheet(ERROR_STYLE)
    # magicgui fixes a label's size to its text's one line; a wrapped message must grow to its lines instead.
    policy = QSizePolicy(QSizePolicy.Policy.Preferred, QSizePolicy.Policy.Minimum)
    policy.setHeightForWidth(True)
    label.native.setSizePolicy(policy)
    label.visible = False
    return label


class TrainForm(QWidget):
    """The job's fields as magicgui widgets (``self.<TrainConfig field>``), each above a red message addressed by
    the field's name; the continue-from box, the extra pairs, the corrections option and the models folder are Qt
    parts of their own between them. The layer pickers list the viewer's layers and follow its layer list."""

    def __init__(self, viewer: napari.Viewer, parent: QWidget | None = None,
                 settings: DockSettings | None = None) -> None:
        super().__init__(parent)
        import napari.layers

        defaults = TrainConfig(name="")
        types = get_type_hints(TrainConfig)
        self.image = layer_choice(viewer, napari.layers.Image)
        self.labels = layer_choice(viewer, napari.layers.Labels)
        self.mode = create_widget(value=defaults.mode, annotation=types["mode"])
        self.dims = create_widget(value=defaults.dims, annotation=types["dims"])
        self.voxel = [FloatSpinBox(value=1.0, min=0.0, max=1e6, step=1.0) for _ in "xyz"]
        for box in self.voxel:
            box.native.setDecimals(3)
        self.window = _text(AUTO)
        self.lr = _text(AUTO)
        self.name = _text("e.g. chloroplasts-3d")
        for field, (low, high) in INTS.items():
            setattr(self, field, create_widget(value=min(max(getattr(defaults, field), low), high),
                                               annotation=int, options={"min": low, "max": high}))
        for field, (low, high, word) in OPTIONAL_INTS.items():
            setattr(self, field, _optional_int(low, high, word))
        self.time_limit = FloatSpinBox(value=0.0, min=0.0, max=1e6, step=1.0)
        self.time_limit.native.setDecimals(1)
        self.time_limit.native.setSpecialValueText("none")
        self.stem_stride = ComboBox(value=None, choices=[(AUTO, None), ("1", 1), ("2", 2), ("4", 4)])
        self.painted_slices_only = create_widget(value=False, annotation=bool, options={
            "text": "slices without labels are unpainted, not background"})
        # Not a field of the job: where this dock runs it. Off by default, so a crash can never close napari.
        self.in_process = CheckBox(value=False, text="in napari's own process (a crash there would close napari)")
        # One folder for every dock (settings.py): this field edits the shared setting and follows it.
        self.dock_settings = settings or shared_settings()
        self.models_field = ModelsFolderField(self.dock_settings)
        self.models_dir = self.models_field.edit
        self.continue_from = ContinueFromBox(self.models_folder())
        self.pairs = ExtraPairs(viewer)
        self.touched = TouchedOption(defaults.touched_margin)
        self._suggested_name = ""

        self._errors: dict[str, QLabel] = {}
        named = {"time_limit_min": self.time_limit, "voxel_size": self.voxel[2]}
        widgets = {field: named.get(field) or getattr(self, field) for _, field in MAIN_ROWS + ADVANCED_ROWS if field}
        voxels = iter(self.voxel[:2])
        # Rows added after the containers are made: magicgui gives a container's labels one width only then.
        self.fields, self.main, self.advanced_fields = (Container(labels=True) for _ in range(3))
        self.fields.extend([self._row("Image stack", "image", self.image), self._row("Labels", "labels", self.labels)])
        self.main.extend([self._row(label, field, widgets[field] if field else next(voxels))
                          for label, field in MAIN_ROWS])
        self.advanced_fields.extend([self._row(label, field, widgets[field]) for label, field in ADVANCED_ROWS])
        for container in (self.fields, self.main, self.advanced_fields):
            container.margins = (0, 0, 0, 0)
        self.advanced = self.advanced_fields.native
        self.advanced.setVisible(False)
        toggle = QToolButton()
        toggle.setCheckable(True)
        toggle.setStyleSheet("QToolButton { border: none; }")
        toggle.toggled.connect(self.advanced.setVisible)
        toggle.toggled.connect(lambda shown: toggle.setText("Advanced ▾" if shown else "Advanced ▸"))
        toggle.setText("Advanced ▸")
        self.advanced_toggle = toggle

        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self._qt_rows(("Continue from", "init_from", self.continue_from)))
        layout.addWidget(self.fields.native)
        layout.addWidget(self._qt_rows(("", "", self.pairs), ("Corrections", "touched_only", self.touched)))
        self._errors["touched_margin"] = self._errors["auto_labels"] = self._errors["touched_only"]
        layout.addWidget(self.main.native)
        layout.addWidget(self._qt_rows(("Models folder", "models_dir", self.models_field)))
        layout.addWidget(toggle)
        layout.addWidget(self.advanced)

        follow_layers(viewer, self)
        self.image.changed.connect(self._defaults_from_image)
        self._defaults_from_image()
        follow(self.dock_settings.models_dir_changed, self.continue_from, "set_root")
        self.continue_from.parent_changed.connect(self._on_parent_changed)
        self.continue_from.models_changed.connect(self._on_models_changed)
        self._recall()

    def reset_choices(self, *_args: Any) -> None:
        """Re-read the layer pickers' choices from the viewer (``follow_layers`` calls it on each change)."""
        reset_keeping_pick(self.image, self.labels)

    def _row(self, label: str, field: str, widget: ValueWidget) -> Container:
        """The field and, under it, its red message: in the field's column, so it is never drawn over the field."""
        tip = TIPS.get(field)
        if tip:
            widget.tooltip = tip
        parts: list[Any] = [widget]
        if field:
            error = _error()
            self._errors[field] = error.native  # a QLabel, as the Qt parts' messages: one way to show them all
            parts.append(error)
        holder = Container(widgets=parts, labels=False, label=label, tooltip=tip)
        holder.margins = (0, 0, 0, 0)
        holder.native.layout().setSpacing(1)
        return holder

    def _qt_rows(self, *rows: tuple[str, str, QWidget]) -> QWidget:
        """The form's Qt parts (they hold several widgets and signals of their own), each with its message."""
        holder = QWidget()
        form = QFormLayout(holder)
        form.setFieldGrowthPolicy(QFormLayout.FieldGrowthPolicy.AllNonFixedFieldsGrow)
        form.setContentsMargins(0, 0, 0, 0)
        for label, field, widget in rows:
            if not field:
                form.addRow(label, widget)
                continue
            tip = TIPS.get(field)
            if tip:
                widget.setToolTip(tip)
            error = error_label()
            self._errors[field] = error
            form.addRow(label, column(widget, error))
        return holder

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

    # ----- defaults from the data -----------------------------------------------------------------------------
    def _defaults_from_image(self, *_args: Any) -> None:
        """The image layer's scale is the best guess of its voxel size; its dimensionality of 2D or 3D. A continued
        model keeps its parent's: the network was built for those."""
        layer = self.image.value
        if layer is None or self.continue_from.record is not None:
            return
        x, y, z = voxel_size_from_scale(layer.scale)
        self.voxel[0].value = x
        self.voxel[1].value = y
        if layer.ndim >= 3 and not getattr(layer, "rgb", False):
            self.voxel[2].value = z
            self.dims.value = "3d"
        elif layer.ndim == 2:
            self.dims.value = "2d"

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
                widget.enabled = record is None
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
        if self.name.value.strip() == suggested:  # a name the user typed is theirs to change
            self._suggested_name = next_version_name(record.name, taken)
            self.name.value = self._suggested_name

    # ----- reading and writing --------------------------------------------------------------------------------
    def models_folder(self) -> Path:
        """The folder in the field, made the setting of every dock (a job reads it: the docks must agree)."""
        self.dock_settings.set_models_dir(self.models_dir.text())
        return self.dock_settings.models_dir

    def read(self) -> tuple[TrainConfig, list[ConfigError]]:
        """The form as a config, plus the fields that could not even be parsed (those keep their defaults)."""
        errors: list[ConfigError] = []
        window = _parse_window(self.window.value, errors)
        lr = None
        if self.lr.value.strip() and self.lr.value.strip().lower() != AUTO:
            try:
                lr = float(self.lr.value)
                if not math.isfinite(lr):
                    raise ValueError
            except ValueError:
                errors.append(ConfigError("lr", f"{self.lr.value!r} is not a number (e.g. 0.001 or 1e-3), or "
                                                "empty for the plan to choose"))
                lr = None
        image, labels = self.image.value, self.labels.value
        extra_images, extra_labels = self.pairs.names()
        parent: ModelRecord | None = self.continue_from.record
        corrected = auto_labels_of(labels)
        optional = {field: None if getattr(self, field).value == low else int(getattr(self, field).value)
                    for field, (low, _, _) in OPTIONAL_INTS.items()}
        config = TrainConfig(
            name=self.name.value.strip(),
            mode=self.mode.value,
            dims=self.dims.value,
            image=source_of(image) if image is not None else None,
            labels=source_of(labels) if labels is not None else None,
            voxel_size=tuple(box.value for box in self.voxel),  # type: ignore[arg-type]
            window=window,
            lr=lr,
            time_limit_min=self.time_limit.value or None,
            stem_stride=self.stem_stride.value,
            painted_slices_only=self.painted_slices_only.value,
            **{field: getattr(self, field).value for field in INTS},
            **optional,
            init_from=parent.name if parent is not None else None,
            extra_images=extra_images,
            extra_labels=extra_labels,
            pair_weights=self.pairs.weights(),
            touched_only=self.touched.checkbox.isChecked(),
            touched_margin=self.touched.margin.value(),
            auto_labels=unsaved_layer(corrected[0]) if corrected is not None else None,
            rehearse=REHEARSE_SHARE if parent is not None else 0.0,
        )
        return config, errors

    def set_values(self, **values: Any) -> None:
        """Fill fields by ``TrainConfig`` name (plus ``models_dir``), e.g. from a saved model's config.json."""
        def optional_int(field: str) -> Any:
            low = OPTIONAL_INTS[field][0]
            return lambda v: setattr(getattr(self, field), "value", low if v is None else int(v))

        def whole(field: str) -> Any:
            return lambda v: setattr(getattr(self, field), "value", int(v))

        setters = {
            "name": lambda v: setattr(self.name, "value", str(v)),
            "mode": lambda v: setattr(self.mode, "value", v),
            "dims": lambda v: setattr(self.dims, "value", v),
            "voxel_size": lambda v: [setattr(box, "value", float(s)) for box, s in zip(self.voxel, v or (1.0, 1.0, 1.0))],
            "window": lambda v: setattr(self.window, "value", "" if v is None else ",".join(str(int(w)) for w in v)),
            "lr": lambda v: setattr(self.lr, "value", "" if v is None else f"{v:g}" if isinstance(v, float) else str(v)),
            "time_limit_min": lambda v: setattr(self.time_limit, "value", float(v or 0.0)),
            "stem_stride": lambda v: setattr(self.stem_stride, "value", None if v is None else int(v)),
            "painted_slices_only": lambda v: setattr(self.painted_slices_only, "value", bool(v)),
            **{field: whole(field) for field in INTS},
            **{field: optional_int(field) for field in OPTIONAL_INTS},
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
            if error.field in ADVANCED:
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
