"""Sharing models: bioimage.io model packages out, and this plugin's own packages back in.

An exported zip is a bioimage.io model (``rdf.yaml``; TorchScript weights that return probabilities, so other
tools need nothing of ours; a test input and the output it must give) that also carries the model folder itself
(``config.json``, ``model.json``, ``metrics.csv`` and the best and last checkpoints, at the same relative paths
as in a models folder), so the same zip imports back as a named model with its training job and can be resumed.

An imported zip comes from someone else and is treated as hostile until checked: every entry name is checked
before anything is written, only the files a model folder needs are copied (to paths chosen here, never to
names taken from the zip), checkpoints must load with ``weights_only=True``, and the model is assembled in a
hidden folder inside the models folder and renamed into place only once it loads.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import posixpath
import shutil
import stat
import uuid
import warnings
import zipfile
from collections.abc import Sequence
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np
import torch

from ..io.files import atomic_write
from ..job.config import NAME_PATTERN, NAME_RULE
from ..job.kinds import activation, channel_id, channel_names
from .network import UNet
from .store import METRICS_FILE, ModelError, ModelRecord, ModelStore

RDF_NAME = "rdf.yaml"
TORCHSCRIPT_NAME = "weights_torchscript.pt"
STATE_DICT_NAME = "weights_state_dict.pt"
TEST_INPUT_NAME = "test_input.npy"
TEST_OUTPUT_NAME = "test_output.npy"
README_NAME = "README.md"
OUR_FILES = ("config.json", "model.json")
OPTIONAL_FILES = (METRICS_FILE,)
DEFAULT_AUTHOR = "napari-plantbio-train user"
UNET_CITATION = {"text": "Ronneberger, Fischer and Brox. U-Net: Convolutional Networks for Biomedical Image "
                         "Segmentation. MICCAI 2015.", "doi": "10.1007/978-3-319-24574-4_28"}
TEST_SEED = 0


class ProbabilityUNet(UNet):
    """The U-Net with its output activation: per-map sigmoid (instance) or softmax over classes (semantic).

    Its state dict is the plain U-Net's, so the ``pytorch_state_dict`` weights of a package rebuild through this
    class (``import_from: napari_plantbio_train.exchange``) and give the same probabilities as the TorchScript.
    """

    def __init__(self, activation: str, **spec: Any) -> None:
        if activation not in ("sigmoid", "softmax"):
            raise ValueError(f"activation must be 'sigmoid' or 'softmax', got {activation!r}")
        super().__init__(**spec)
        self.activation = activation

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = super().forward(x)
        return logits.sigmoid() if self.activation == "sigmoid" else logits.softmax(1)


def _activation(record: ModelRecord) -> str:
    return activation(record.config.mode)


def _channel_names(record: ModelRecord) -> list[str]:
    return [channel_id(name) for name in channel_names(record.config.mode, record.classes)]


def _spatial_axes(record: ModelRecord) -> str:
    return "zyx" if record.network["spatial_dims"] == 3 else "yx"


# ---------------------------------------------------------------------------------------------------- export


def export_model(store: ModelStore, name: str, output_zip: str | Path, *, test_input: np.ndarray | None = None,
                 which: str = "best", authors: Sequence[str] | None = None,
                 description: str | None = None) -> Path:
    """Write model ``name`` as a validated bioimage.io package; returns the zip's path.

    ``test_input`` is a raw (not normalised) crop of the model's window size, (Z, Y, X) for 3D models and (Y, X)
    for 2D ones; without one a deterministic random window is used. bioimage.io applies a package's
    preprocessing to its test input, so the test input is stored in raw intensities and the normalisation is
    the package's ``scale_linear`` step. The zip is written under a temporary name, validated with
    bioimageio.spec and only then moved to ``output_zip`` (files.atomic_write); a package that fails
    validation is an error.
    """
    try:
        from bioimageio.spec.model.v0_5 import ModelDescr
    except ImportError as exc:
        raise ModelError("exporting a bioimage.io package needs bioimageio.spec "
                         "(pip install 'bioimageio.spec>=0.5')") from exc

    output_zip = Path(output_zip).expanduser()
    if output_zip.suffix.lower() != ".zip":
        raise ValueError(f"the package must be a .zip file, got {output_zip.name!r}")
    model, record = store.load_model(name, which)
    window = tuple(int(w) for w in record.window)
    spatial = _spatial_axes(record)
    window = window[-len(spatial):]  # a 2D model's window may be stored as (1, Y, X)
    raw = _test_input(record, window, test_input)
    low, high = float(record.normalisation["low"]), float(record.normalisation["high"])
    normalised = (raw - np.float32(low)) * np.float32(1.0 / (high - low))

    wrapped = ProbabilityUNet(_activation(record), **record.network)
    wrapped.load_state_dict(model.state_dict())
    wrapped.eval()
    example = torch.from_numpy(np.ascontiguousarray(normalised[None, None]))
    with warnings.catch_warnings():
        # The shape checks in UNet.forward are Python branches; tracing records the window's path only, which
        # is why the package declares the window as a fixed input size.
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        traced = torch.jit.trace(wrapped, example)
    with torch.no_grad():
        expected = traced(example).numpy()

    files: dict[str, bytes] = {
        TEST_INPUT_NAME: _npy(raw[None, None]),
        TEST_OUTPUT_NAME: _npy(expected),
        TORCHSCRIPT_NAME: _torchscript_bytes(traced),
        STATE_DICT_NAME: _torch_bytes(model.state_dict()),
        README_NAME: _readme(record, window).encode(),
    }
    attachments = _model_folder_files(record)
    rdf = _rdf(record, window, low, high, files, attachments, ModelDescr.implemented_format_version,
               authors or [DEFAULT_AUTHOR], description)
    files[RDF_NAME] = _yaml(rdf).encode()

    def write(handle: Any) -> None:
        with zipfile.ZipFile(handle, "w", compression=zipfile.ZIP_DEFLATED) as archive:
            for arcname, data in files.items():
                archive.writestr(arcname, data)
            for arcname, path in attachments.items():
                archive.write(path, arcname)

    atomic_write(output_zip, write, verify=validate_package)
    return output_zip


def validate_package(path: str | Path) -> None:
    """Raise ModelError unless bioimageio.spec accepts the package (format and local file checks; nothing
    is downloaded: every file a package of ours names is inside the zip)."""
    from bioimageio.spec import InvalidDescr, load_description

    with zipfile.ZipFile(path) as archive:
        descr = load_description(archive, perform_io_checks=True)
    summary = descr.validation_summary
    if isinstance(descr, InvalidDescr) or summary.status == "failed":
        problems = "; ".join(f"{'.'.join(map(str, e.loc))}: {e.msg}" for e in summary.errors[:5])
        raise ModelError(f"the bioimage.io package failed validation: {problems or summary.status}")


def _test_input(record: ModelRecord, window: tuple[int, ...], given: np.ndarray | None) -> np.ndarray:
    if given is None:
        # Normalised values spread like a normalised stack (mostly in [0, 1]), mapped back to raw intensities.
        low, high = record.normalisation["low"], record.normalisation["high"]
        unit = np.random.default_rng(TEST_SEED).uniform(-0.1, 1.1, size=window)
        return (low + unit * (high - low)).astype(np.float32)
    given = np.asarray(given)
    if given.shape != window:
        raise ValueError(f"test_input must be a raw crop of the model's window {window} "
                         f"({', '.join(_spatial_axes(record).upper())}), got shape {given.shape}")
    if not np.isfinite(given).all():
        raise ValueError("test_input contains NaN or infinite values")
    return given.astype(np.float32)


def _model_folder_files(record: ModelRecord) -> dict[str, Path]:
    """The files that make the package importable as a model folder, at their paths in a model folder."""
    out = {name: record.folder / name for name in OUR_FILES + OPTIONAL_FILES
           if (record.folder / name).is_file()}
    for relative in {record.last, record.best} - {None}:
        out[PurePosixPath(relative).as_posix()] = record.folder / relative
    return out


def _rdf(record: ModelRecord, window: tuple[int, ...], low: float, high: float, files: dict[str, bytes],
         attachments: dict[str, Path], format_version: str, authors: Sequence[str],
         description: str | None) -> dict[str, Any]:
    config = record.config
    spatial = _spatial_axes(record)
    # voxel_size is (x, y, z) in nm
    scale = dict(zip("xyz", (float(v) for v in config.voxel_size)))
    in_axes: list[dict[str, Any]] = [{"type": "batch"}, {"type": "channel", "channel_names": ["raw"]}]
    out_axes: list[dict[str, Any]] = [{"type": "batch"},
                                      {"type": "channel", "channel_names": _channel_names(record)}]
    for axis, size in zip(spatial, window):
        common = {"type": "space", "id": axis, "unit": "nanometer", "scale": scale[axis]}
        in_axes.append({**common, "size": size})
        out_axes.append({**common, "size": {"tensor_id": "raw", "axis_id": axis}})
    gain = 1.0 / (high - low)
    kind = "instance" if config.mode == "instance" else "semantic"
    text = description or (
        f"{config.dims.upper()} {kind} segmentation U-Net for electron microscopy, trained with "
        f"napari-plantbio-train (model {record.name!r}, {record.iterations_done} iterations). Outputs are "
        "probabilities: " + ("foreground and contour maps (sigmoid)." if kind == "instance"
                             else "one map per class (softmax)."))
    activation = _activation(record)
    torch_version = torch.__version__.split("+")[0]
    return {
        "format_version": format_version,
        "type": "model",
        "name": f"napari-plantbio-train {record.name}",
        "description": text,
        "authors": [{"name": a} for a in authors],
        "cite": [UNET_CITATION],
        "license": "MIT",
        "tags": ["napari-plantbio-train", "electron-microscopy", "unet", "pytorch", config.dims,
                 f"{kind}-segmentation"],
        "documentation": {"source": README_NAME, "sha256": _sha256(files[README_NAME])},
        "inputs": [{
            "id": "raw",
            "description": "raw EM intensities; the preprocessing maps the training stack's 0.5th and 99.5th "
                           "percentiles to 0 and 1",
            "axes": in_axes,
            "test_tensor": {"source": TEST_INPUT_NAME, "sha256": _sha256(files[TEST_INPUT_NAME])},
            "data": {"type": "float32"},
            "preprocessing": [{"id": "scale_linear", "kwargs": {"gain": gain, "offset": -low * gain}}],
        }],
        "outputs": [{
            "id": "probabilities",
            "description": f"per-pixel probabilities ({activation} applied inside the network)",
            "axes": out_axes,
            "test_tensor": {"source": TEST_OUTPUT_NAME, "sha256": _sha256(files[TEST_OUTPUT_NAME])},
            "data": {"type": "float32", "range": [0.0, 1.0]},
        }],
        "weights": {
            "pytorch_state_dict": {
                "source": STATE_DICT_NAME,
                "sha256": _sha256(files[STATE_DICT_NAME]),
                "architecture": {"callable": "ProbabilityUNet", "import_from": "napari_plantbio_train.models.exchange",
                                 "kwargs": {"activation": activation, **record.network}},
                "pytorch_version": torch_version,
            },
            "torchscript": {
                "source": TORCHSCRIPT_NAME,
                "sha256": _sha256(files[TORCHSCRIPT_NAME]),
                "parent": "pytorch_state_dict",
                "pytorch_version": torch_version,
            },
        },
        "attachments": [{"source": arcname} for arcname in attachments],
        "config": {"napari_plantbio_train": {"model_name": record.name, "mode": config.mode, "dims": config.dims,
                                             "classes": record.classes, "window": list(window),
                                             "normalisation": {"low": low, "high": high}}},
    }


def _readme(record: ModelRecord, window: tuple[int, ...]) -> str:
    config = record.config
    outputs = ("two maps, foreground and contour (sigmoid probabilities); a seeded watershed on them separates "
               "touching objects" if config.mode == "instance"
               else f"one map per class value {record.classes} (softmax probabilities)")
    return (f"# {record.name}\n\n"
            f"A {config.dims} {config.mode} segmentation U-Net trained with napari-plantbio-train.\n\n"
            f"- Input: raw intensities, window {window} ({', '.join(_spatial_axes(record).upper())}), voxel size "
            f"{tuple(config.voxel_size)} nm (x, y, z); normalised as (x - {record.normalisation['low']:g}) / "
            f"({record.normalisation['high']:g} - {record.normalisation['low']:g}).\n"
            f"- Output: {outputs}.\n"
            f"- Training: {record.iterations_done} iterations; best validation {record.score_name}: "
            f"{'-' if record.best_score is None else f'{record.best_score:.4f}'}.\n\n"
            "## Validation\n\n"
            f"The score is the {record.score_name} of the labels predicted for a held-out block of the training "
            "stack, predicted the way auto-labelling predicts a new stack (sliding windows, the same "
            "post-processing).\n\n"
            "Import it back into napari-plantbio-train with `napari-plantbio-train import PACKAGE.zip`; the zip "
            "carries the model folder (`config.json`, `model.json`, checkpoints).\n")


def _npy(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, np.ascontiguousarray(array, dtype=np.float32), allow_pickle=False)
    return buffer.getvalue()


def _torch_bytes(obj: Any) -> bytes:
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.getvalue()


def _torchscript_bytes(module: torch.jit.ScriptModule) -> bytes:
    buffer = io.BytesIO()
    torch.jit.save(module, buffer)
    return buffer.getvalue()


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _yaml(data: dict[str, Any]) -> str:
    """YAML is a superset of JSON: JSON text is a valid rdf.yaml without a YAML writer."""
    return json.dumps(data, indent=2) + "\n"


# ---------------------------------------------------------------------------------------------------- import


def import_model(store: ModelStore, path: str | Path, *, name: str | None = None) -> str:
    """Add the model in ``path`` (a package exported by this plugin, or a model folder) under ``name``
    (default: its own name); returns the name. Nothing is written unless every check passes."""
    path = Path(path).expanduser()
    if path.is_dir():
        source: _Source = _FolderSource(path)
    elif path.is_file():
        source = _ZipSource(path)
    else:
        raise ModelError(f"{path} does not exist")
    try:
        return _import(store, source, name)
    finally:
        source.close()


def _import(store: ModelStore, source: _Source, name: str | None) -> str:
    missing = [f for f in OUR_FILES if not source.has(f)]
    if len(missing) == len(OUR_FILES):
        foreign = " (it is a bioimage.io package made by another tool)" if source.has(RDF_NAME) else ""
        raise ModelError(f"{source.path} holds no napari-plantbio-train model{foreign}: only packages exported by "
                         "this plugin (or model folders) can be imported")
    if missing:
        raise ModelError(f"{source.path} is incomplete: it lacks {', '.join(missing)}")
    try:
        config = json.loads(source.read("config.json"))
        meta = json.loads(source.read("model.json"))
    except (ValueError, UnicodeDecodeError) as exc:
        raise ModelError(f"{source.path} has an unreadable config.json or model.json: {exc}") from None
    if not isinstance(config, dict) or not isinstance(meta, dict):
        raise ModelError(f"{source.path}: config.json and model.json must each hold a JSON object")
    checkpoints = {}
    for key in ("last", "best"):
        relative = meta.get(key)
        if relative is None and key == "best":
            continue
        if not isinstance(relative, str) or _unsafe_name(relative) or not source.has(relative):
            raise ModelError(f"{source.path}: model.json names {key} checkpoint {relative!r}, which the package "
                             "does not contain")
        checkpoints[key] = relative
    name = name or config.get("name")
    if not isinstance(name, str) or not NAME_PATTERN.match(name):
        raise ModelError(f"{name!r} is not a valid model name: {NAME_RULE}")
    if store.folder(name).exists():
        raise ModelError(f"a model named {name!r} already exists in {store.root}; import it under another name "
                         "(--name NEW, or import_model(..., name='NEW'))")

    store.root.mkdir(parents=True, exist_ok=True)
    # Assembled in a hidden folder inside the models folder (same file system, so the final rename is atomic,
    # and its name cannot be a model name, so no one lists the half-written model).
    staging = store.root / f".import-{uuid.uuid4().hex[:12]}"
    try:
        folder = staging / name
        (folder / "checkpoints").mkdir(parents=True)
        config["name"] = name
        (folder / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True))
        for optional in OPTIONAL_FILES:
            if source.has(optional):
                (folder / optional).write_bytes(source.read(optional))
        for key, relative in checkpoints.items():
            # Stored under a name chosen here, whatever path the package used.
            target = f"checkpoints/{posixpath.basename(relative)}"
            (folder / target).write_bytes(source.read(relative))
            meta[key] = target
        (folder / "model.json").write_text(json.dumps(meta, indent=2, sort_keys=True))  # last, as the store does
        for which in checkpoints:
            _check_loadable(ModelStore(staging), name, which)
        os.rename(folder, store.folder(name))
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return name


def _check_loadable(staged: ModelStore, name: str, which: str) -> None:
    """The checkpoint loads as plain tensors (``weights_only``) and fits the network model.json describes."""
    try:
        staged.load_model(name, which)
    except ModelError:
        raise
    except (KeyError, TypeError, ValueError, RuntimeError, AttributeError) as exc:
        raise ModelError(f"the {which} checkpoint is not usable with the network in model.json: "
                         f"{str(exc).splitlines()[0] if str(exc) else type(exc).__name__}") from None


def _unsafe_name(name: str) -> bool:
    """True for names that could leave a folder: absolute, drive-qualified, backslashed or with '..'."""
    if not name or name.startswith(("/", "\\")) or "\\" in name or (len(name) > 1 and name[1] == ":"):
        return True
    return any(part == ".." for part in name.split("/"))


class _Source:
    path: Path

    def has(self, name: str) -> bool:
        raise NotImplementedError

    def read(self, name: str) -> bytes:
        raise NotImplementedError

    def close(self) -> None:
        pass


class _ZipSource(_Source):
    """A zip whose every entry has been checked before any is read."""

    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            self.archive = zipfile.ZipFile(path)
        except (zipfile.BadZipFile, OSError) as exc:
            raise ModelError(f"{path} is not a readable zip package: {exc}") from None
        try:
            for info in self.archive.infolist():
                if _unsafe_name(info.filename):
                    raise ModelError(f"{path} is refused: entry {info.filename!r} points outside the package")
                if stat.S_ISLNK(info.external_attr >> 16):
                    raise ModelError(f"{path} is refused: entry {info.filename!r} is a symbolic link")
            self.names = {info.filename for info in self.archive.infolist() if not info.is_dir()}
        except ModelError:
            self.archive.close()
            raise

    def has(self, name: str) -> bool:
        return name in self.names

    def read(self, name: str) -> bytes:
        try:
            return self.archive.read(name)
        except (zipfile.BadZipFile, OSError, EOFError) as exc:  # a bad CRC or a truncated entry
            raise ModelError(f"{self.path} is damaged: entry {name!r} cannot be read ({exc})") from None

    def close(self) -> None:
        self.archive.close()


class _FolderSource(_Source):
    """A model folder (or an unpacked package); links are refused rather than followed."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def _file(self, name: str) -> Path | None:
        if _unsafe_name(name):
            return None
        target = self.path / name
        parts = [self.path / Path(*PurePosixPath(name).parts[:i + 1]) for i in range(len(PurePosixPath(name).parts))]
        if any(p.is_symlink() for p in parts):
            raise ModelError(f"{self.path} is refused: {name} is a symbolic link")
        return target if target.is_file() else None

    def has(self, name: str) -> bool:
        return self._file(name) is not None

    def read(self, name: str) -> bytes:
        target = self._file(name)
        if target is None:
            raise ModelError(f"{self.path} lacks {name}")
        return target.read_bytes()
