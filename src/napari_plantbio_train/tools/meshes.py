"""Surface meshes of instance labels: marching cubes per object, Taubin smoothing, and PLY/OBJ/STL files.

Plain numpy, scipy and scikit-image (no Qt, no torch). Vertices are in nm in napari's (z, y, x) order; the files
are written in (x, y, z) order, as other mesh tools expect, with faces wound counter-clockwise seen from outside
(outward normals) in that order. Every file goes through a temporary name and ``os.replace``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Iterable, Mapping

import numpy as np
from scipy import ndimage, sparse
from skimage.measure import marching_cubes

FORMATS = ("ply", "obj", "stl")

from ..io.files import atomic_write

TAUBIN_LAMBDA, TAUBIN_MU = 0.5, -0.53


@dataclass(frozen=True)
class Mesh:
    vertices: np.ndarray  # (N, 3) float32, nm, (z, y, x)
    faces: np.ndarray  # (M, 3) int32 indices into vertices

    @property
    def volume(self) -> float:
        """Enclosed volume in nm^3 (divergence theorem); positive for outward faces in (x, y, z) order."""
        return signed_volume(self.vertices[:, ::-1], self.faces)


def signed_volume(vertices: np.ndarray, faces: np.ndarray) -> float:
    a, b, c = (vertices[faces[:, k]].astype(np.float64) for k in range(3))
    return float(np.einsum("ij,ij->i", a, np.cross(b, c)).sum() / 6.0)


def object_meshes(labels: np.ndarray, voxel_size_nm: Iterable[float] = (1.0, 1.0, 1.0),
                  smoothing_iterations: int = 10, ids: Iterable[int] | None = None) -> dict[int, Mesh]:
    """One closed mesh per object id of a (Z, Y, X) label stack; ids absent from the stack are skipped.

    ``voxel_size_nm`` is (x, y, z), as elsewhere in this package. Each object is cut out on its bounding box and
    padded by one background voxel on every side, so objects touching the stack border or only one voxel thick
    still give closed surfaces.
    """
    labels = np.asarray(labels)
    if labels.ndim != 3:
        raise ValueError(f"meshes need a (Z, Y, X) stack; got an array of shape {labels.shape}")
    if not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"labels must be integers, not {labels.dtype}")
    spacing = np.asarray(tuple(voxel_size_nm), dtype=np.float64)[::-1]
    if spacing.shape != (3,) or not np.all(spacing > 0):
        raise ValueError(f"voxel_size_nm must be three positive numbers (x, y, z); got {tuple(voxel_size_nm)}")
    if labels.size == 0 or labels.max() <= 0:
        return {}
    # find_objects indexes boxes by id; with huge ids, work on consecutive stand-ins (0 stays background).
    if labels.max() > 4 * labels.size:
        uniques, inverse = np.unique(np.maximum(labels, 0), return_inverse=True)
        shift = int(uniques[0] > 0)
        index = inverse.reshape(labels.shape) + shift
        lookup = {int(u): i + shift for i, u in enumerate(uniques) if u > 0}
    else:
        index = labels if labels.min() >= 0 else np.maximum(labels, 0)
        lookup = None
    boxes = ndimage.find_objects(index)
    if lookup is None:
        lookup = {j + 1: j + 1 for j, box in enumerate(boxes) if box is not None}
    wanted = sorted(lookup) if ids is None else sorted({int(i) for i in ids} & set(lookup))
    meshes: dict[int, Mesh] = {}
    for object_id in wanted:
        j = lookup[object_id]
        box = boxes[j - 1]
        mask = np.pad(index[box] == j, 1).astype(np.float32)
        verts, faces, _, _ = marching_cubes(mask, level=0.5, spacing=tuple(spacing))
        origin = (np.array([s.start for s in box]) - 1) * spacing
        verts = taubin_smooth(verts + origin, faces, smoothing_iterations)
        faces = faces.astype(np.int32)
        if signed_volume(verts[:, ::-1], faces) < 0:
            faces = np.ascontiguousarray(faces[:, ::-1])
        meshes[int(object_id)] = Mesh(verts.astype(np.float32), faces)
    return meshes


def taubin_smooth(vertices: np.ndarray, faces: np.ndarray, iterations: int,
                  lam: float = TAUBIN_LAMBDA, mu: float = TAUBIN_MU) -> np.ndarray:
    """Taubin's lambda|mu smoothing with uniform neighbour weights: shrink, then inflate, ``iterations`` times.

    The pair acts as a low-pass filter, removing the marching-cubes staircase while keeping the volume roughly.
    """
    v = np.asarray(vertices, dtype=np.float64)
    if iterations <= 0 or len(faces) == 0:
        return v.copy()
    n = len(v)
    i = np.concatenate([faces[:, 0], faces[:, 1], faces[:, 2], faces[:, 1], faces[:, 2], faces[:, 0]])
    j = np.concatenate([faces[:, 1], faces[:, 2], faces[:, 0], faces[:, 0], faces[:, 1], faces[:, 2]])
    adjacency = sparse.coo_matrix((np.ones(len(i)), (i, j)), shape=(n, n)).tocsr()
    adjacency.data[:] = 1.0  # an edge shared by two faces counts once
    degree = np.asarray(adjacency.sum(axis=1)).ravel()
    # Row-normalised: average = W @ v; a vertex without neighbours stays put.
    weights = sparse.diags(np.divide(1.0, degree, out=np.zeros(n), where=degree > 0)) @ adjacency
    still = (degree == 0)[:, None]
    for _ in range(iterations):
        for factor in (lam, mu):
            v = v + factor * np.where(still, 0.0, weights @ v - v)
    return v


def combine(meshes: Mapping[int, Mesh]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """All meshes as one napari Surface: (vertices, faces, values), values being each vertex's object id."""
    vertices = [m.vertices for m in meshes.values()]
    offsets = np.cumsum([0] + [len(v) for v in vertices])
    faces = [m.faces + offset for m, offset in zip(meshes.values(), offsets)]
    values = [np.full(len(m.vertices), object_id, dtype=np.float64) for object_id, m in meshes.items()]
    if not vertices:
        return np.zeros((0, 3), np.float32), np.zeros((0, 3), np.int32), np.zeros(0, np.float64)
    return (np.concatenate(vertices).astype(np.float32), np.concatenate(faces).astype(np.int32),
            np.concatenate(values))


def _xyz(mesh: Mesh) -> np.ndarray:
    return np.ascontiguousarray(mesh.vertices[:, ::-1], dtype=np.float32)


def write_ply(mesh: Mesh, path: str | Path) -> None:
    """ASCII PLY, coordinates (x, y, z) in nm."""
    def write(handle: BinaryIO) -> None:
        handle.write((f"ply\nformat ascii 1.0\ncomment units nm\nelement vertex {len(mesh.vertices)}\n"
                      "property float x\nproperty float y\nproperty float z\n"
                      f"element face {len(mesh.faces)}\nproperty list uchar int vertex_indices\nend_header\n")
                     .encode())
        np.savetxt(handle, _xyz(mesh), fmt="%.3f")
        np.savetxt(handle, mesh.faces, fmt="3 %d %d %d")
    atomic_write(Path(path), write)


def write_obj(mesh: Mesh, path: str | Path) -> None:
    """Wavefront OBJ, coordinates (x, y, z) in nm; OBJ indices start at 1."""
    def write(handle: BinaryIO) -> None:
        handle.write(b"# napari-plantbio-train surface mesh, units nm\n")
        np.savetxt(handle, _xyz(mesh), fmt="v %.3f %.3f %.3f")
        np.savetxt(handle, mesh.faces.astype(np.int64) + 1, fmt="f %d %d %d")
    atomic_write(Path(path), write)


STL_TRIANGLE = np.dtype([("normal", "<f4", 3), ("corners", "<f4", (3, 3)), ("attribute", "<u2")])


def write_stl(mesh: Mesh, path: str | Path) -> None:
    """Binary STL (80-byte header, triangle count, 50 bytes per triangle), coordinates (x, y, z) in nm."""
    corners = _xyz(mesh)[mesh.faces]
    normals = np.cross(corners[:, 1] - corners[:, 0], corners[:, 2] - corners[:, 0])
    lengths = np.linalg.norm(normals, axis=1, keepdims=True)
    triangles = np.zeros(len(mesh.faces), STL_TRIANGLE)
    triangles["normal"] = np.divide(normals, lengths, out=np.zeros_like(normals), where=lengths > 0)
    triangles["corners"] = corners

    def write(handle: BinaryIO) -> None:
        handle.write(b"napari-plantbio-train surface mesh, units nm".ljust(80, b" "))
        handle.write(np.uint32(len(triangles)).astype("<u4").tobytes())
        handle.write(triangles.tobytes())
    atomic_write(Path(path), write)


WRITERS = {"ply": write_ply, "obj": write_obj, "stl": write_stl}


def export_meshes(meshes: Mapping[int, Mesh], folder_or_file: str | Path, fmt: str,
                  per_object: bool) -> list[Path]:
    """Write ``object_<id>.<fmt>`` per object into a folder, or all objects as one mesh into one file.

    For one file, a path without the format's extension gets it, and an existing folder gets ``meshes.<fmt>``.
    Returns the paths written.
    """
    fmt = fmt.lower().lstrip(".")
    if fmt not in WRITERS:
        raise ValueError(f"unknown mesh format {fmt!r}; choose one of {', '.join(FORMATS)}")
    if not meshes:
        raise ValueError("there are no meshes to export")
    target, writer = Path(folder_or_file), WRITERS[fmt]
    if per_object:
        paths = [target / f"object_{object_id}.{fmt}" for object_id in meshes]
        for path, mesh in zip(paths, meshes.values()):
            writer(mesh, path)
        return paths
    if target.is_dir():
        target = target / f"meshes.{fmt}"
    elif target.suffix.lower() != f".{fmt}":
        target = target.with_name(target.name + f".{fmt}")
    vertices, faces, _ = combine(meshes)
    writer(Mesh(vertices, faces), target)
    return [target]
