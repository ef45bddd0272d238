import numpy as np
import pytest
from scipy import ndimage as ndi

from napari_plantbio_train.io.checks import check_labels as check_label_array
from napari_plantbio_train.training.targets import GAP_REACH, class_values, instance_targets, semantic_target


def touching_squares() -> np.ndarray:
    labels = np.zeros((1, 12, 16), dtype=np.uint16)
    labels[0, 2:10, 2:8] = 1
    labels[0, 2:10, 8:14] = 2
    return labels


@pytest.mark.parametrize("contour_width", [1, 2, 4])
def test_touching_objects_are_split_into_two_seeds(contour_width):
    labels = touching_squares()
    target = instance_targets(labels, per_slice=True, contour_width=contour_width)
    assert target.shape == (2, *labels.shape) and target.dtype == np.float32
    foreground, contour = target[0] > 0, target[1] > 0
    assert contour[0, 5, 7] and contour[0, 5, 8]
    seeds = foreground & ~contour
    full = np.ones((3, 3, 3), dtype=bool)  # even diagonal contact would merge them
    assert ndi.label(seeds, structure=full)[1] == 2
    band = contour[0, 5, 2:14]
    assert band.sum() == 2 * max(1, (contour_width + 1) // 2) * 2  # outer edges plus the shared border


def test_background_is_neither_foreground_nor_contour_away_from_gaps():
    labels = np.zeros((1, 30, 30), dtype=np.uint16)
    labels[0, 5:15, 5:15] = 1  # alone: no other object within reach of its surroundings
    target = instance_targets(labels, per_slice=False, contour_width=2)
    background = labels == 0
    assert not target[0][background].any() and not target[1][background].any()
    np.testing.assert_array_equal(target[0] > 0, labels > 0)


@pytest.mark.parametrize("gap", [1, 3, 4, 7])
def test_background_between_near_objects_is_contour(gap):
    """Painted neighbours usually leave a strip of cytoplasm between them; that strip is what splits them. Up to
    the reach it is contour whole; wider, the part within reach of both objects is."""
    reach = GAP_REACH * 2
    labels = np.zeros((1, 20, 40), dtype=np.uint16)
    labels[0, 4:16, 4:16] = 1
    labels[0, 4:16, 16 + gap:28 + gap] = 2
    target = instance_targets(labels, per_slice=True, contour_width=2)
    foreground, contour = target[0] > 0, target[1] > 0
    within = [c for c in range(16, 16 + gap) if c - 15 <= reach and 16 + gap - c <= reach]
    assert within == list(range(16, 16 + gap)) or gap > reach
    assert contour[0, 4:16, within].all() and not foreground[0, 4:16, 16:16 + gap].any()
    assert not contour[0, 4:16, [c for c in range(16, 16 + gap) if c not in within]].any()
    assert not contour[0, 10, 0] and not contour[0, 10, 39]  # beside one object only
    assert ndi.label(foreground & ~contour)[1] == 2


def test_background_beyond_the_reach_is_not_contour():
    labels = np.zeros((1, 20, 60), dtype=np.uint16)
    labels[0, 4:16, 4:16] = 1
    labels[0, 4:16, 16 + 2 * GAP_REACH * 2 + 1:50] = 2  # one pixel wider than both reaches together
    contour = instance_targets(labels, per_slice=True, contour_width=2)[1] > 0
    assert not contour[0, 10, 16:16 + 2 * GAP_REACH * 2 + 1].any()


def test_objects_stacked_along_z_get_a_contour_only_in_3d():
    labels = np.zeros((4, 9, 9), dtype=np.int32)
    labels[:2, 1:8, 1:8] = 5
    labels[2:, 1:8, 1:8] = 6
    centre = (slice(None), 4, 4)
    stacked = instance_targets(labels, per_slice=False)[1][centre]
    np.testing.assert_array_equal(stacked, [0, 1, 1, 0])
    independent = instance_targets(labels, per_slice=True)[1][centre]
    np.testing.assert_array_equal(independent, [0, 0, 0, 0])


def test_object_ends_along_z_are_not_contour():
    labels = np.zeros((3, 9, 9), dtype=np.uint8)
    labels[:, 1:8, 1:8] = 1
    contour = instance_targets(labels, per_slice=False)[1]
    assert not contour[:, 4, 4].any()


def test_2d_labels_and_bool_labels():
    labels = touching_squares()[0]
    assert instance_targets(labels, per_slice=True).shape == (2, 12, 16)
    mask = labels > 0
    target = instance_targets(mask, per_slice=True)
    np.testing.assert_array_equal(target[0] > 0, mask)
    assert class_values(mask) == [0, 1]


def test_semantic_remaps_sparse_values():
    labels = np.array([[[0, 3, 7], [7, 7, 0]]], dtype=np.uint16)
    values = class_values(labels)
    assert values == [0, 3, 7]
    target = semantic_target(labels, values)
    assert target.dtype == np.int64
    np.testing.assert_array_equal(target, [[[0, 1, 2], [2, 2, 0]]])
    wide = labels.astype(np.int64) * 10**9
    assert class_values(wide) == [0, 3 * 10**9, 7 * 10**9]
    np.testing.assert_array_equal(semantic_target(wide, class_values(wide)), target)


def test_semantic_order_follows_values():
    labels = np.array([[[0, 3, 7]]], dtype=np.int32)
    np.testing.assert_array_equal(semantic_target(labels, [7, 0, 3]), [[[1, 2, 0]]])


def test_unknown_value_raises_naming_it():
    labels = np.array([[[0, 3, 9]]], dtype=np.uint8)
    with pytest.raises(ValueError, match=r"\b9\b"):
        semantic_target(labels, [0, 3, 7])
    with pytest.raises(ValueError, match=r"-4"):
        semantic_target(np.array([[[0, -4]]]), [0, 3])


def test_float_labels_raise_naming_the_field():
    with pytest.raises(ValueError, match=r"^truth: .*fractional"):
        check_label_array(np.random.default_rng(0).random((2, 8, 8)), field="truth")
    with pytest.raises(ValueError, match=r"^truth: .*float32.*integer type"):
        check_label_array(np.ones((2, 8, 8), dtype=np.float32), field="truth")


def test_rgb_labels_raise_naming_the_field():
    with pytest.raises(ValueError, match=r"^annotation: .*RGB colour"):
        check_label_array(np.zeros((32, 32, 3), dtype=np.uint8), field="annotation")
    with pytest.raises(ValueError, match=r"RGBA"):
        check_label_array(np.zeros((4, 32, 32, 4), dtype=np.uint8))


def test_valid_labels_pass():
    check_label_array(np.zeros((1, 4, 3), dtype=np.uint8))  # a tiny stack, not a colour image
    check_label_array(np.zeros((32, 32, 3), dtype=np.uint16))
    check_label_array(np.zeros((3, 8, 8), dtype=bool))


@pytest.mark.parametrize("contour_width", [1, 2, 3, 5])
def test_contours_are_skimage_inner_boundaries_grown_slice_by_slice(contour_width):
    """The one-pass contour equals the per-slice definition it replaced: skimage's inner boundaries, grown
    in-plane, objects touching each other and the stack's border included; plus the background that two
    different objects come within reach of, by each object's own chessboard distance."""
    from skimage.segmentation import find_boundaries

    rng = np.random.default_rng(contour_width)
    labels = ndi.zoom(rng.integers(0, 6, (3, 9, 11)), (1, 5, 5), order=0).astype(np.uint16)  # touching blocks
    labels[:, 20:, 30:] = 0
    expected = np.zeros(labels.shape, bool)
    grow = (contour_width + 1) // 2 - 1
    for z, plane in enumerate(labels):
        edge = find_boundaries(plane, mode="inner", connectivity=1)
        if grow:
            edge = ndi.binary_dilation(edge, structure=ndi.generate_binary_structure(2, 1), iterations=grow)
        near = sum((ndi.distance_transform_cdt(plane != i, metric="chessboard") <= GAP_REACH * contour_width)
                   .astype(int) for i in np.unique(plane) if i)
        expected[z] = (edge & (plane > 0)) | ((plane == 0) & (near >= 2))
    contour = instance_targets(labels, per_slice=True, contour_width=contour_width)[1] > 0
    np.testing.assert_array_equal(contour, expected)
