"""Biologists' own files: numbered slice folders, LZW TIFFs with a voxel size, HDF5, zarr; labels saved back."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile

from napari_plantbio_train.stacks import StackError, natural_key, read_stack


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
    stack.data.file.close()
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
