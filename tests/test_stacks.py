"""Biologists' own files: numbered slice folders, LZW TIFFs with a voxel size, HDF5, zarr; labels saved back."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tifffile

from napari_plantbio_train.io.stacks import StackError, natural_key
from napari_plantbio_train.io.stacks import read as read_stack


def _slices(folder, names, shape=(6, 5)):
    folder.mkdir()
    for value, name in enumerate(names):
        tifffile.imwrite(folder / name, np.full(shape, value, np.uint8), compression="lzw")
    return folder


def test_natural_order_with_and_without_leading_zeros(tmp_path):
    names = ["slice10.tif", "slice2.tif", "slice1.tif", "slice003.tif"]
    assert sorted(names, key=natural_key) == ["slice1.tif", "slice2.tif", "slice003.tif", "slice10.tif"]
    folder = _slices(tmp_path / "stack", ["s1.tif", "s2.tif", "s10.tif", "s03.tif"])
    stack = read_stack(folder)
    # written with values 0..3 in the order above; read back in counting order s1, s2, s03, s10
    assert stack.data.shape == (4, 6, 5)
    assert [int(plane[0, 0]) for plane in stack.data] == [0, 1, 3, 2]


def test_a_slice_of_another_size_is_named(tmp_path):
    folder = _slices(tmp_path / "stack", ["a1.tif", "a2.tif"])
    tifffile.imwrite(folder / "a3.tif", np.zeros((7, 5), np.uint8))
    with pytest.raises(StackError, match="a3.tif is \\(7, 5\\)"):
        read_stack(folder)


def test_imagej_tiff_voxel_size_in_nm(tmp_path):
    path = tmp_path / "em.tif"
    data = np.arange(3 * 8 * 9, dtype=np.uint16).reshape(3, 8, 9)
    tifffile.imwrite(path, data, imagej=True, resolution=(1 / 0.005, 1 / 0.006),
                     metadata={"spacing": 0.05, "unit": "um", "axes": "ZYX"}, compression="lzw")
    stack = read_stack(path)
    np.testing.assert_array_equal(stack.data, data)
    assert stack.voxel_size == pytest.approx((5.0, 6.0, 50.0))


def test_plain_tiff_has_no_voxel_size(tmp_path):
    path = tmp_path / "plain.tif"
    tifffile.imwrite(path, np.zeros((4, 4), np.uint8))
    assert read_stack(path).voxel_size is None


def test_hdf5_and_zarr(tmp_path):
    h5py = pytest.importorskip("h5py")
    import zarr

    data = np.random.default_rng(0).integers(0, 255, (3, 10, 12), dtype=np.uint8)
    with h5py.File(tmp_path / "s.h5", "w") as handle:
        dataset = handle.create_dataset("volumes/raw", data=data)
        dataset.attrs["element_size_um"] = (0.04, 0.008, 0.008)
    stack = read_stack(tmp_path / "s.h5")
    np.testing.assert_array_equal(stack.data[:], data)  # read lazily from the open file
    assert stack.voxel_size == pytest.approx((8.0, 8.0, 40.0))
    zarr.open_array(store=str(tmp_path / "s.zarr"), mode="w", shape=data.shape, dtype=data.dtype)[:] = data
    np.testing.assert_array_equal(read_stack(tmp_path / "s.zarr").data[:], data)
    (tmp_path / "x.png").write_bytes(b"not a stack")
    with pytest.raises(StackError, match="unsupported file type '.png'"):
        read_stack(tmp_path / "x.png")


def test_napari_opens_a_slice_folder_and_saves_labels_with_the_voxel_size(tmp_path, make_napari_viewer):
    folder = _slices(tmp_path / "cells", ["c1.tif", "c2.tif", "c3.tif"])
    viewer = make_napari_viewer()
    layers = viewer.open(str(folder), plugin="napari-plantbio-train")
    assert layers[0].data.shape == (3, 6, 5)
    labels = viewer.add_labels(np.arange(30, dtype=np.uint32).reshape(1, 6, 5).repeat(3, 0), name="cells_labels",
                               scale=(40.0, 8.0, 8.0))
    out = tmp_path / "saved.tif"
    labels.save(str(out), plugin="napari-plantbio-train")
    back = read_stack(out)
    np.testing.assert_array_equal(back.data, labels.data)
    assert back.voxel_size == pytest.approx((8.0, 8.0, 40.0))
    reopened = viewer.open(str(out), plugin="napari-plantbio-train", layer_type=None)
    assert tuple(reopened[0].scale) == (40.0, 8.0, 8.0)


# ----- the one reader, for every entry point ------------------------------------------------------------------
import json  # noqa: E402
import pickle  # noqa: E402
import shutil  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402

from napari_plantbio_train.cli import main  # noqa: E402
from napari_plantbio_train.io.synthetic import make_stack  # noqa: E402

FORMATS = ("tif", "slices", "h5", "zarr")


def _write(kind: str, folder, name: str, data: np.ndarray):
    """``data`` as a file (or folder) of the given kind, as biologists' tools write them."""
    import zarr

    if kind == "tif":
        path = folder / f"{name}.tif"
        tifffile.imwrite(path, data, compression="zlib", photometric="minisblack")
    elif kind == "slices":
        path = folder / name
        path.mkdir()
        for z, plane in enumerate(data, start=1):
            tifffile.imwrite(path / f"section{z}.tif", plane, compression="lzw")
    elif kind == "h5":
        h5py = pytest.importorskip("h5py")
        path = folder / f"{name}.h5"
        with h5py.File(path, "w") as handle:
            handle.create_dataset("volume", data=data, chunks=True)
    else:
        path = folder / f"{name}.zarr"
        zarr.open_array(store=str(path), mode="w", shape=data.shape, dtype=data.dtype,
                        chunks=(1, *data.shape[1:]))[:] = data
    return path


@pytest.fixture(scope="module")
def sample_stack():
    return make_stack((3, 64, 64), seed=4)


@pytest.fixture(scope="module")
def tiny_sample_model(tmp_path_factory, sample_stack):
    """A few iterations of a 3D semantic model on the synthetic sample: enough to label with, in seconds."""
    root = tmp_path_factory.mktemp("reader-models")
    image = _write("tif", root, "image", sample_stack.image)
    labels = _write("tif", root, "labels", sample_stack.semantic)
    args = ["train", "--image", str(image), "--labels", str(labels), "--mode", "semantic", "--dims", "3d",
            "--name", "sample", "--window", "2,32,32", "--iterations", "2", "--validate-every", "2",
            "--base-channels", "4", "--depth", "2", "--precision", "fp32", "--models-dir", str(root / "models"),
            "--quiet"]
    assert main(args) == 0
    return root / "models"


@pytest.mark.parametrize("kind", FORMATS)
def test_every_format_reads_lazily_and_travels_by_path(kind, tmp_path, sample_stack):
    path = _write(kind, tmp_path, "em", sample_stack.image)
    stack = read_stack(path)
    assert stack.data.shape == sample_stack.image.shape and stack.data.dtype == np.uint8
    np.testing.assert_array_equal(stack.data[1, 10:20, 5:9], sample_stack.image[1, 10:20, 5:9])
    np.testing.assert_array_equal(np.asarray(stack.data), sample_stack.image)
    travelled = pickle.loads(pickle.dumps(stack.data))  # what a dask worker receives: a path, not a file handle
    assert len(pickle.dumps(stack.data)) < 2000
    np.testing.assert_array_equal(travelled[2], sample_stack.image[2])


@pytest.mark.parametrize("kind", FORMATS)
def test_the_command_line_trains_and_predicts_on_every_format(kind, tmp_path, sample_stack, tiny_sample_model):
    image = _write(kind, tmp_path, "em", sample_stack.image)
    labels = _write(kind, tmp_path, "em_labels", sample_stack.semantic)
    models = tmp_path / "models"
    shutil.copytree(tiny_sample_model, models)
    args = ["train", "--image", str(image), "--labels", str(labels), "--mode", "semantic", "--dims", "3d",
            "--name", f"on-{kind}", "--window", "2,32,32", "--iterations", "1", "--validate-every", "1",
            "--base-channels", "4", "--depth", "2", "--precision", "fp32", "--models-dir", str(models), "--quiet"]
    assert main(args) == 0
    output = tmp_path / "result.tif"
    assert main(["predict", "--model", "sample", "--image", str(image), "--output", str(output), "--models-dir",
                 str(models), "--precision", "fp32", "--quiet"]) == 0
    assert tifffile.imread(output).shape == sample_stack.image.shape


def test_a_truncated_tiff_is_named_as_such(tmp_path, sample_stack):
    path = _write("tif", tmp_path, "em", sample_stack.image)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(StackError, match="em.tif .*truncated or damaged"):
        np.asarray(read_stack(path).data)


@pytest.fixture(scope="module")
def dask_cluster(tmp_path_factory):
    """A real cluster: ``dask scheduler`` and ``dask worker`` as processes of their own, as on a cluster."""
    pytest.importorskip("distributed")
    folder = tmp_path_factory.mktemp("dask")
    address_file = folder / "scheduler.json"
    bin_dir = Path(sys.executable).parent
    scheduler = subprocess.Popen([str(bin_dir / "dask"), "scheduler", "--scheduler-file", str(address_file),
                                  "--host", "127.0.0.1", "--port", "0", "--no-dashboard"],
                                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    worker = None
    try:
        deadline = time.monotonic() + 60
        while not address_file.exists() and time.monotonic() < deadline:
            time.sleep(0.2)
        address = json.loads(address_file.read_text())["address"]
        worker = subprocess.Popen([str(bin_dir / "dask"), "worker", address, "--nworkers", "1", "--nthreads", "1",
                                   "--no-dashboard", "--local-directory", str(folder)],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        from distributed import Client

        with Client(address, timeout=60) as client:
            client.wait_for_workers(1, timeout=60)
        yield address
    finally:
        for process in (worker, scheduler):
            if process is not None:
                process.terminate()
                process.wait(timeout=30)


@pytest.mark.parametrize("kind", ("tif", "h5", "slices"))
def test_predict_on_a_cluster_of_worker_processes(kind, tmp_path, sample_stack, tiny_sample_model, dask_cluster):
    image = _write(kind, tmp_path, "em", sample_stack.image)
    local, remote = tmp_path / "local.zarr", tmp_path / "remote.zarr"
    common = ["--model", "sample", "--image", str(image), "--models-dir", str(tiny_sample_model), "--precision",
              "fp32", "--block-voxels", "4000", "--quiet"]
    assert main(["predict", *common, "--output", str(local)]) == 0
    assert main(["predict", *common, "--output", str(remote), "--scheduler", dask_cluster]) == 0
    import zarr

    np.testing.assert_array_equal(zarr.open_array(str(remote), mode="r")[:], zarr.open_array(str(local), mode="r")[:])
