"""Model versions as the docks show them: lineage beside each name, the next free version name, and the training
dock's "Continue from" list of the models folder."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from pathlib import Path

from qtpy.QtCore import Qt, QTimer, Signal
from qtpy.QtWidgets import QComboBox, QWidget

from ..job.config import NAME_PATTERN
from ..models.store import ModelRecord, ModelStore
from .common import poll_while_shown, unless_deleted
from .model_info import describe

NEW_MODEL = "(new model)"
_VERSION = re.compile(r"^(?P<base>.+)-v(?P<number>\d+)$")


def lineage_name(record: ModelRecord) -> str:
    """``chloro-v3 (from chloro-v2 ← chloro)``: the name, then its ancestors nearest first, as a user traces
    a version back; a model trained from scratch is just its name."""
    ancestors = list(record.lineage) or ([record.parent] if record.parent else [])
    if not ancestors:
        return record.name
    return f"{record.name} (from {' ← '.join(reversed(ancestors))})"


def describe_version(record: ModelRecord) -> str:
    """The auto-label dock's one line per model, with the lineage spliced in after the name."""
    text = describe(record)
    return lineage_name(record) + (text[len(record.name):] if text.startswith(record.name) else f" — {text}")


def version_tooltip(record: ModelRecord) -> str:
    """The whole story of a version, for a tooltip: what it is, where it came from, how far it got."""
    score = (f"best {record.score_name} {record.best_score:.3f}" if record.best_score is not None
             else "not scored yet")
    lines = [describe(record)]
    if record.parent:
        lines.append(f"Continued from {record.parent}; lineage: {' → '.join([*record.lineage, record.name])}")
    else:
        lines.append("Trained from scratch")
    lines.append(f"{record.iterations_done} iterations in this version, {score}")
    return "\n".join(lines)


def next_version_name(parent: str, taken: Iterable[str]) -> str:
    """The first free ``<base>-vN`` after the parent's own number: ``chloro`` gives ``chloro-v2``,
    ``chloro-v2`` gives ``chloro-v3``, skipping names already in the models folder."""
    taken = set(taken)
    found = _VERSION.match(parent)
    base, number = (found["base"], int(found["number"]) + 1) if found else (parent, 2)
    while True:
        suffix = f"-v{number}"
        name = base[:64 - len(suffix)] + suffix  # a long parent name still gives a valid folder name
        if name not in taken and NAME_PATTERN.match(name):
            return name
        number += 1


def folder_stamp(root: Path) -> tuple:
    """Cheap fingerprint of the models folder: each model's description file and when it was last written."""
    try:
        return tuple(sorted((path.parent.name, path.stat().st_mtime_ns) for path in root.glob("*/model.json")))
    except OSError:  # a model removed while looking: differs from the last stamp, so the next look refreshes
        return ()


def fill_model_box(box: QComboBox, records: Iterable[ModelRecord], text: Callable[[ModelRecord], str],
                   first: str | None = None) -> dict[str, ModelRecord]:
    """List the models in ``box`` (item data: the name; tooltip: the version's story), after an optional
    ``first`` entry whose data is None; the picked model stays picked while it is listed. Signals are held back
    while the list is rebuilt, so listeners see one change at most. Returns the records by name."""
    by_name = {record.name: record for record in records}
    current = box.currentData()
    box.blockSignals(True)
    box.clear()
    if first is not None:
        box.addItem(first, None)
    for record in by_name.values():
        box.addItem(text(record), record.name)
        box.setItemData(box.count() - 1, version_tooltip(record), Qt.ItemDataRole.ToolTipRole)
    box.setCurrentIndex(max(0, box.findData(current)) if current is not None else 0)
    box.blockSignals(False)
    return by_name


class ContinueFromBox(QComboBox):
    """``(new model)`` then every model of the models folder, each shown with its lineage.

    The folder is looked at again every ``POLL_MS`` (the auto-label dock's way: a cheap fingerprint of the
    ``model.json`` files), so a model saved by any dock or by the command line appears without a click.
    ``parent_changed`` fires only when the picked parent really changes, not on every re-read.
    """

    POLL_MS = 2000
    parent_changed = Signal()
    models_changed = Signal()

    def __init__(self, root: str | Path, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setSizeAdjustPolicy(QComboBox.SizeAdjustPolicy.AdjustToMinimumContentsLengthWithIcon)
        self.setMinimumContentsLength(16)
        self.setToolTip("Start from a trained model's weights as a new version of it, or train a new model")
        self.store = ModelStore(root)
        self._records: dict[str, ModelRecord] = {}
        self._stamp: tuple = ()
        self._picked: str | None = None
        self.currentIndexChanged.connect(self._on_index_changed)
        self._poll = QTimer(self, interval=self.POLL_MS)
        self._poll.timeout.connect(self._look_again)
        poll_while_shown(self, self._poll)
        self.refresh()

    @property
    def record(self) -> ModelRecord | None:
        """The picked parent; None for a new model."""
        return self._records.get(self.currentData())

    def names(self) -> list[str]:
        """The models listed, in the list's order ("(new model)" left out)."""
        return [self.itemData(i) for i in range(1, self.count())]

    def select(self, name: str | None) -> None:
        index = 0 if name is None else self.findData(name)
        if index < 0:
            raise ValueError(f"no model named {name!r} in {self.store.root}; models: {self.names()}")
        self.setCurrentIndex(index)

    def set_root(self, root: str | Path) -> None:
        if Path(root).expanduser() != self.store.root:
            self.store = ModelStore(root)
            self.refresh()

    def refresh(self) -> list[str]:
        """Re-read the folder; the picked parent stays picked while it exists."""
        self._stamp = folder_stamp(self.store.root)
        self._records = fill_model_box(self, self.store.records(), lineage_name, first=NEW_MODEL)
        self.models_changed.emit()
        self._on_index_changed()
        return self.names()

    @unless_deleted
    def _look_again(self) -> None:
        # While a job trains the form (and this box) is disabled and its checkpoints keep changing the folder:
        # re-reading every model then would only take time from the viewer. The job's end refreshes it.
        if self.isEnabled() and folder_stamp(self.store.root) != self._stamp:
            self.refresh()

    def _on_index_changed(self, *_args: object) -> None:
        name = self.currentData()
        if name != self._picked:
            self._picked = name
            self.parent_changed.emit()

