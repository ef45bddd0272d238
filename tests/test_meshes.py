"""Surface meshes of labels: geometry in nm, closed surfaces, smoothing, the three file formats and the dock."""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import pytest

from napari_plantbio_train.tools.meshes import Mesh, combine, export_meshes, object_meshes, write_obj, write_ply, write_stl

VOXEL = (8.0, 8.0, 40.0)  # x, y, z in nm: the anisotropy of a FIB-SEM stack
SPACING = np.array(VOXEL[::-1])  # z, y, x
RADIUS = 400.0


def ball(radius: float = RADIUS, shape=(30, 120, 120), object_id: int = 7) -> tuple[np.ndarray, np.ndarray]:
    """A ball in an anisotropic grid, and its centre in nm (z, y, x)."""
    centre = (np.array(shape) // 2) * SPACING
    grid = np.stack(np.meshgrid(*(np.arange(n) * s for n, s in zip(shape, SPACING)), indexing="ij"), axis=-1)
    inside = np.linalg.norm(grid - centre, axis=-1) <= radius
    return inside.astype(np.int32) * object_id, centre


def enclosed_volume(mesh: Mesh) -> float:
    """Divergence theorem over the triangles, in (x, y, z) order, where faces are wound outwards."""
    corners = mesh.vertices[:, ::-1].astype(np.float64)[mesh.faces]
    return float(np.einsum("ij,ij->i", corners[:, 0], np.cross(corners[:, 1], corners[:, 2])).sum() / 6)


def assert_closed(mesh: Mesh) -> None:
    """Every edge is shared by exactly two triangles, in opposite directions (consistently wound)."""
    f = mesh.faces.astype(np.int64)
    directed = np.concatenate([f[:, [0, 1]], f[:, [1, 2]], f[:, [2, 0]]])
    keys = directed[:, 0] * len(mesh.vertices) + directed[:, 1]
    reverse = directed[:, 1] * len(mesh.vertices) + directed[:, 0]
    assert len(np.unique(keys)) == len(keys), "an edge runs the same way in two triangles"
    assert np.isin(reverse, keys).all(), "an edge has no twin: the surface has a hole"


def distance_spread(mesh: Mesh, centre: np.ndarray) -> float:
    return float(np.linalg.norm(mesh.vertices - centre, axis=1).std())


# ----- geometry -----------------------------------------------------------------------------------------------
def test_a_ball_gives_a_closed_mesh_of_the_right_volume_and_extent():
    labels, centre = ball()
    meshes = object_meshes(labels, VOXEL, smoothing_iterations=0)
    assert list(meshes) == [7]
    mesh = meshes[7]
    assert mesh.vertices.dtype == np.float32 and mesh.vertices.shape[1] == 3
    assert mesh.faces.dtype == np.int32 and mesh.faces.shape[1] == 3
    assert_closed(mesh)
    expected = 4 / 3 * np.pi * RADIUS**3
    assert enclosed_volume(mesh) == pytest.approx(expected, rel=0.1)
    assert mesh.volume == pytest.approx(enclosed_volume(mesh), rel=1e-6)
    # Unsmoothed, the surface crosses half way between the outermost voxel centres and the background ones.
    inside = np.argwhere(labels) * SPACING
    np.testing.assert_allclose(mesh.vertices.min(0), inside.min(0) - SPACING / 2, atol=1e-3)
    np.testing.assert_allclose(mesh.vertices.max(0), inside.max(0) + SPACING / 2, atol=1e-3)
    assert mesh.vertices.max(0)[0] - centre[0] == pytest.approx(RADIUS + VOXEL[2] / 2)  # z in 40 nm slices
    assert mesh.vertices.max(0)[2] - centre[2] == pytest.approx(RADIUS + VOXEL[0] / 2)  # x in 8 nm pixels


def test_smoothing_keeps_the_volume_and_lessens_the_staircase():
    labels, centre = ball()
    raw = object_meshes(labels, VOXEL, smoothing_iterations=0)[7]
    smooth = object_meshes(labels, VOXEL, smoothing_iterations=10)[7]
    assert_closed(smooth)
    np.testing.assert_array_equal(smooth.faces, raw.faces)
    assert enclosed_volume(smooth) == pytest.approx(4 / 3 * np.pi * RADIUS**3, rel=0.1)
    assert enclosed_volume(smooth) == pytest.approx(enclosed_volume(raw), rel=0.05)
    assert distance_spread(smooth, centre) < 0.9 * distance_spread(raw, centre)


def test_touching_objects_thin_objects_and_chosen_ids():
    labels = np.zeros((6, 20, 20), np.uint16)
    labels[1:5, 2:10, 2:10] = 3
    labels[1:5, 10:18, 2:10] = 9  # touches object 3 along a whole face
    labels[0, 0, 19] = 12  # one voxel in the first slice, at the stack's corner
    meshes = object_meshes(labels, (5, 5, 50), smoothing_iterations=0)
    assert sorted(meshes) == [3, 9, 12]
    for object_id, mesh in meshes.items():
        assert_closed(mesh)
    for object_id in (3, 9):  # a box of voxels loses only its corners and edges to the cut at level 0.5
        count = (labels == object_id).sum() * 5 * 5 * 50
        assert 0.8 * count < enclosed_volume(meshes[object_id]) < count
    assert enclosed_volume(meshes[12]) == pytest.approx(5 * 5 * 50 / 6), "one voxel becomes an octahedron"
    assert sorted(object_meshes(labels, (5, 5, 50), ids=[9, 4, 0])) == [9], "absent ids are skipped"
    huge = labels.astype(np.int64) * 2**40
    assert sorted(object_meshes(huge, (5, 5, 50))) == [3 * 2**40, 9 * 2**40, 12 * 2**40]
    assert object_meshes(np.zeros((3, 4, 4), np.uint8)) == {}
    with pytest.raises(ValueError, match="need a"):
        object_meshes(labels[0])


def test_combine_gives_one_surface_with_object_ids():
    labels = np.zeros((6, 20, 20), np.uint16)
    labels[1:5, 2:10, 2:10] = 3
    labels[1:5, 12:18, 2:10] = 9
    meshes = object_meshes(labels, VOXEL)
    vertices, faces, values = combine(meshes)
    n3 = len(meshes[3].vertices)
    assert len(vertices) == n3 + len(meshes[9].vertices) and len(faces) == sum(len(m.faces) for m in meshes.values())
    np.testing.assert_array_equal(values, [3] * n3 + [9] * len(meshes[9].vertices))
    np.testing.assert_array_equal(faces[len(meshes[3].faces):], meshes[9].faces + n3)
    assert faces.max() == len(vertices) - 1


# ----- files --------------------------------------------------------------------------------------------------
def read_ply(path: Path) -> tuple[np.ndarray, np.ndarray]:
    lines = path.read_text().splitlines()
    end = lines.index("end_header")
    header = {line.split()[1]: int(line.split()[2]) for line in lines[:end] if line.startswith("element")}
    body = lines[end + 1:]
    assert len(body) == header["vertex"] + header["face"]
    vertices = np.array([line.split() for line in body[:header["vertex"]]], float)
    faces = np.array([line.split() for line in body[header["vertex"]:]], int)
    assert (faces[:, 0] == 3).all()
    return vertices, faces[:, 1:]


def read_obj(path: Path) -> tuple[np.ndarray, np.ndarray]:
    lines = path.read_text().splitlines()
    vertices = np.array([line.split()[1:] for line in lines if line.startswith("v ")], float)
    faces = np.array([line.split()[1:] for line in lines if line.startswith("f ")], int) - 1
    return vertices, faces


def read_stl(path: Path) -> np.ndarray:
    """The triangles' corners (T, 3, 3), after checking the count against the file size and the normals."""
    raw = path.read_bytes()
    (count,) = struct.unpack("<I", raw[80:84])
    assert len(raw) == 84 + 50 * count
    records = np.frombuffer(raw[84:], np.dtype([("n", "<f4", 3), ("v", "<f4", (3, 3)), ("a", "<u2")]))
    corners = records["v"]
    normals = np.cross(corners[:, 1] - corners[:, 0], corners[:, 2] - corners[:, 0])
    assert (np.einsum("ij,ij->i", normals, records["n"]) >= 0).all(), "stored normals follow the winding"
    return corners


def test_each_format_writes_what_reads_back(tmp_path):
    labels, centre = ball(radius=160.0, shape=(12, 50, 50))
    mesh = object_meshes(labels, VOXEL)[7]
    xyz = mesh.vertices[:, ::-1]  # files are in (x, y, z)

    write_ply(mesh, tmp_path / "ball.ply")
    vertices, faces = read_ply(tmp_path / "ball.ply")
    np.testing.assert_allclose(vertices, xyz, atol=1e-3)
    np.testing.assert_array_equal(faces, mesh.faces)

    write_obj(mesh, tmp_path / "ball.obj")
    vertices, faces = read_obj(tmp_path / "ball.obj")
    np.testing.assert_allclose(vertices, xyz, atol=1e-3)
    np.testing.assert_array_equal(faces, mesh.faces)

    write_stl(mesh, tmp_path / "ball.stl")
    corners = read_stl(tmp_path / "ball.stl")
    assert len(corners) == len(mesh.faces)
    np.testing.assert_allclose(corners, xyz[mesh.faces], atol=1e-3)
    outward = np.cross(corners[:, 1] - corners[:, 0], corners[:, 2] - corners[:, 0])
    assert (np.einsum("ij,ij->i", outward, corners.mean(1) - centre[::-1]) > 0).mean() > 0.99
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ball.obj", "ball.ply", "ball.stl"], "no temp files"


def test_export_per_object_or_together(tmp_path):
    labels = np.zeros((6, 20, 20), np.uint16)
    labels[1:5, 2:10, 2:10] = 3
    labels[1:5, 10:18, 2:10] = 9
    meshes = object_meshes(labels, VOXEL)
    written = export_meshes(meshes, tmp_path / "each", "STL", per_object=True)
    assert written == [tmp_path / "each" / "object_3.stl", tmp_path / "each" / "object_9.stl"]
    assert [len(read_stl(p)) for p in written] == [len(meshes[3].faces), len(meshes[9].faces)]

    (together,) = export_meshes(meshes, tmp_path / "cells", "ply", per_object=False)
    assert together == tmp_path / "cells.ply"
    vertices, faces = read_ply(together)
    assert len(vertices) == sum(len(m.vertices) for m in meshes.values())
    assert len(faces) == sum(len(m.faces) for m in meshes.values())
    assert export_meshes(meshes, tmp_path, "obj", per_object=False) == [tmp_path / "meshes.obj"]
    with pytest.raises(ValueError, match="unknown mesh format 'vtk'; choose one of ply, obj, stl"):
        export_meshes(meshes, tmp_path, "vtk", per_object=True)
    with pytest.raises(ValueError, match="no meshes"):
        export_meshes({}, tmp_path, "ply", per_object=True)
    assert not list(tmp_path.rglob(".*tmp*"))


# ----- the dock in a real viewer ------------------------------------------------------------------------------
def test_dock_shows_surfaces_over_the_labels_and_exports(make_napari_viewer, tmp_path):
    from napari.layers import Surface

    from napari_plantbio_train._widgets.mesh_widget import MeshWidget

    viewer = make_napari_viewer()
    labels, _ = ball(shape=(30, 120, 120))
    labels[2:6, 5:20, 5:20] = 2
    layer = viewer.add_labels(labels, name="cells", scale=(40, 8, 8), translate=(100, -20, 30))
    viewer.add_labels(labels[0], name="flat")
    widget = MeshWidget(viewer)
    viewer.window.add_dock_widget(widget, name="Surface meshes")
    widget.labels_picker.value = layer

    surface = widget.show_surface()
    assert isinstance(surface, Surface) and surface.name == "cells surfaces" and surface in viewer.layers
    np.testing.assert_array_equal(surface.scale, [1, 1, 1])
    np.testing.assert_array_equal(surface.translate, [100, -20, 30])
    assert set(np.unique(surface.data[2])) == {2, 7}
    # The surface hugs the labels in world coordinates: the ball's extent is within a voxel of the labels'.
    world = np.argwhere(labels == 7) * layer.scale + layer.translate
    vertices = surface.data[0][surface.data[2] == 7] + surface.translate
    np.testing.assert_allclose(vertices.min(0), world.min(0), atol=40)
    np.testing.assert_allclose(vertices.max(0), world.max(0), atol=40)
    assert "2 objects of 'cells'" in widget.status.text()

    widget.smoothing.setValue(0)
    layer.data[24:28, 100:110, 100:110] = 5  # painted since: more vertices than the layer has colours for
    assert widget.show_surface() is surface, "showing again refreshes the same layer"
    assert len([lyr for lyr in viewer.layers if isinstance(lyr, Surface)]) == 1
    assert set(np.unique(surface.data[2])) == {2, 5, 7} and len(surface.vertex_colors) == len(surface.vertices)

    written = widget.export(tmp_path / "out", "obj", per_object=True)
    assert written == [tmp_path / "out" / f"object_{i}.obj" for i in (2, 5, 7)]
    assert widget.export(tmp_path / "all.stl", "STL", per_object=False) == [tmp_path / "all.stl"]
    assert widget.export(tmp_path, "vtk", per_object=True) is None and "Unknown mesh format" in widget.status.text()

    widget.labels_picker.value = viewer.layers["flat"]
    assert widget.show_surface() is None
    assert "surface meshes need a 3D stack" in widget.status.text()
    assert widget.export(tmp_path / "flat", "ply", per_object=True) is None and not (tmp_path / "flat").exists()
