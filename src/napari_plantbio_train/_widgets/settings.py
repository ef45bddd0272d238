"""What the docks share and remember between sessions: the models folder, and the last values of the train form.

A new user who set the training dock's models folder expected the auto-label dock to find the model there; with
one folder field per dock it said "no trained model" instead. So the folder is one evented setting: every dock
shows it, a change in any dock is a change in all of them (they listen to ``models_dir_changed``), and it is kept
in a small JSON file in the user's config folder (``$PLANTBIO_CONFIG_DIR`` overrides it, as the tests do) so the
next napari session starts where the user left. ``$PLANTBIO_MODELS_DIR``, when set, wins at start over the file:
it is how a lab points every tool at a shared folder.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from psygnal import Signal

from ..io.files import atomic_write
from ..models.store import ENV_VAR, default_models_dir

CONFIG_ENV = "PLANTBIO_CONFIG_DIR"
_shared: dict[Path, DockSettings] = {}


def settings_file() -> Path:
    folder = os.environ.get(CONFIG_ENV)
    if folder:
        return Path(folder).expanduser() / "settings.json"
    from platformdirs import user_config_dir

    return Path(user_config_dir("napari-plantbio-train", appauthor=False)) / "settings.json"


class DockSettings:
    """The settings of one config file. ``shared_settings()`` gives the one instance every dock uses; an instance
    made with ``persist=False`` (a dock given an explicit folder by a script) changes nothing on disk."""

    models_dir_changed = Signal(object)  # the new folder, a Path

    def __init__(self, path: Path | None = None, *, models_dir: str | Path | None = None,
                 persist: bool = True) -> None:
        self.path, self.persist = path or settings_file(), persist
        stored = self._load() if persist else {}
        self._form: dict[str, Any] = dict(stored.get("train_form") or {})
        if models_dir is not None:
            chosen = Path(models_dir)
        elif os.environ.get(ENV_VAR) or not stored.get("models_dir"):
            chosen = default_models_dir()
        else:
            chosen = Path(stored["models_dir"])
        self._models_dir = chosen.expanduser()

    @property
    def models_dir(self) -> Path:
        return self._models_dir

    def set_models_dir(self, folder: str | Path) -> None:
        """Change the folder for every dock (an empty text means the default folder); kept for next time."""
        text = str(folder).strip()
        new = Path(text).expanduser() if text else default_models_dir()
        if new == self._models_dir:
            return
        self._models_dir = new
        self._save()
        self.models_dir_changed.emit(new)

    def form_values(self) -> dict[str, Any]:
        """The train form's last values (plain JSON values, by field name)."""
        return dict(self._form)

    def remember_form(self, values: dict[str, Any]) -> None:
        if values != self._form:
            self._form = dict(values)
            self._save()

    def _load(self) -> dict[str, Any]:
        try:
            stored = json.loads(self.path.read_text())
        except (OSError, ValueError):
            return {}  # no file yet, or one a crash or a person spoilt: start from the defaults
        return stored if isinstance(stored, dict) else {}

    def _save(self) -> None:
        if not self.persist:
            return
        document = json.dumps({"models_dir": str(self._models_dir), "train_form": self._form}, indent=1)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write(self.path, lambda handle: handle.write(document.encode()))
        except OSError:
            pass  # a read-only home folder: the setting still holds for this session


def shared_settings() -> DockSettings:
    """The one settings object of this config file, shared by every dock of the session."""
    path = settings_file()
    if path not in _shared:
        _shared[path] = DockSettings(path)
    return _shared[path]


def settings_for(models_dir: str | Path | None) -> DockSettings:
    """A dock's settings: the shared ones, or, for a folder given explicitly (a script, a test, a colleague's
    folder opened beside one's own), a private instance that neither changes nor follows the others."""
    return shared_settings() if models_dir is None else DockSettings(models_dir=models_dir, persist=False)
