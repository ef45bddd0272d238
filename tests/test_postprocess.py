import numpy as np
from scipy import ndimage

from napari_plantbio_train.inference.postprocess import instances_from_maps


def _disc(shape: tuple[int, int], centre: tuple[float, float], radius: float) -> np.ndarray:
    yy, xx = np.indices(shape)
    return (yy - centre[0]) ** 2 + (xx - centre[1]) ** 2 <= radius ** 2


def _inner_band(mask: np.ndarray, width: int = 2) -> np.ndarray:
    """Pixels of a 2D mask within `width` steps of its outside, like the contour an instance model predicts."""
    return mask & ~ndimage.binary_erosion(mask, iterations=width)


def test_touching_discs_are_separated_by_the_contour():
    left, right = _disc((40, 60), (20, 20), 12), _disc((40, 60), (20, 42), 12)
    assert (left & right).any()  # they overlap, so the foreground is one blob
    foreground = (left | right).astype(np.float32)
    contour = (_inner_band(left) | _inner_band(right)).astype(np.float32)
    labels = instances_from_maps(foreground[None], contour[None], per_slice=True)
    assert labels.dtype == np.uint32
    assert set(np.unique(labels)) == {0, 1, 2}
    assert (labels[0][foreground > 0] > 0).all()  # the contour band is flooded back into the objects
    # each seed keeps the centre of its own disc
    assert labels[0, 20, 20] != labels[0, 20, 42]


def test_per_slice_and_3d_modes():
    shape = (3, 20, 20)
    foreground = np.zeros(shape, np.float32)
    foreground[:, 5:15, 5:15] = 1
    contour = np.zeros(shape, np.float32)
    labels_3d = instances_from_maps(foreground, contour, per_slice=False, min_seed_size=4, min_size=10)
    labels_2d = instances_from_maps(foreground, contour, per_slice=True, min_seed_size=4, min_size=10)
    assert set(np.unique(labels_3d)) == {0, 1}
    assert set(np.unique(labels_2d)) == {0, 1, 2, 3}
    assert len({labels_2d[z, 10, 10] for z in range(3)}) == 3


def test_small_objects_removed_and_ids_consecutive():
    foreground = np.zeros((1, 40, 40), np.float32)
    foreground[0, 2:12, 2:12] = 1  # 100 px: kept
    foreground[0, 20:24, 20:24] = 1  # 16 px: seed kept, object below min_size
    foreground[0, 30:38, 2:12] = 1  # 80 px: kept
    foreground[0, 30:32, 30:32] = 1  # 4 px: seed too small, never grows
    contour = np.zeros_like(foreground)
    labels = instances_from_maps(foreground, contour, per_slice=False, min_seed_size=16, min_size=64)
    assert np.array_equal(np.unique(labels), [0, 1, 2])
    assert labels[0, 21, 21] == 0 and labels[0, 31, 31] == 0
    assert np.count_nonzero(labels) == 180


def test_nothing_above_threshold_gives_empty_labels():
    labels = instances_from_maps(np.full((2, 8, 8), 0.2, np.float32), np.zeros((2, 8, 8), np.float32),
                                 per_slice=False)
    assert labels.dtype == np.uint32
    assert not labels.any()


def test_touching_discs_split_at_their_waist_even_without_a_predicted_contour():
    """A faint contour between touching objects must not merge them: distance maxima still seed both."""
    yy, xx = np.mgrid[:60, :90]
    discs = ((yy - 30) ** 2 + (xx - 28) ** 2 < 20**2) | ((yy - 30) ** 2 + (xx - 62) ** 2 < 20**2)
    foreground = np.repeat(discs[None].astype(np.float32), 3, axis=0)
    labels = instances_from_maps(foreground, np.zeros_like(foreground), per_slice=False, seed_prominence=4)
    assert len(np.unique(labels)) == 3
    assert labels[1, 30, 28] != labels[1, 30, 62]


def test_params_follow_the_labelled_objects():
    from napari_plantbio_train.inference.postprocess import params_from_truth

    small = np.zeros((2, 100, 100), np.uint16)
    small[:, 10:20, 10:20] = 1
    large = np.zeros((2, 400, 400), np.uint16)
    large[:, 50:250, 50:250] = 1
    p_small = params_from_truth(small, per_slice=True)
    p_large = params_from_truth(large, per_slice=False, anisotropy=5)
    assert p_small["seed_prominence"] < p_large["seed_prominence"]
    assert p_small["min_size"] < p_large["min_size"]
    assert p_large["anisotropy"] == 5 and p_small["anisotropy"] == 1


def _ellipse_with_grains() -> tuple[np.ndarray, np.ndarray]:
    """A lens-shaped object whose bright grains the network called background: (Z, Y, X) foreground and truth."""
    yy, xx = np.mgrid[:80, :160]
    lens = ((yy - 40) / 22.0) ** 2 + ((xx - 80) / 60.0) ** 2 <= 1
    grains = _disc((80, 160), (40, 55), 9) | _disc((80, 160), (40, 80), 9) | _disc((80, 160), (40, 105), 9)
    foreground = np.repeat((lens & ~grains)[None].astype(np.float32), 3, axis=0)
    return foreground, np.repeat(lens[None], 3, axis=0)


def test_holes_in_an_object_neither_split_it_nor_stay_holes():
    foreground, lens = _ellipse_with_grains()
    contour = np.zeros_like(foreground)
    kept = instances_from_maps(foreground, contour, per_slice=False, seed_prominence=2, fill_holes=0)
    filled = instances_from_maps(foreground, contour, per_slice=False, seed_prominence=2, fill_holes=1)
    assert len(np.unique(kept)) > 2, "the rings around the grains seed several objects"
    assert np.array_equal(np.unique(filled), [0, 1])
    assert np.array_equal(filled > 0, lens), "the grains belong to the object"


def test_the_gap_ringed_by_several_objects_is_no_hole():
    """Four touching objects around an empty space: the space is nobody's hole and stays background."""
    ring = np.zeros((1, 60, 60), np.float32)
    ring[0, 10:50, 10:50] = 1
    ring[0, 20:40, 20:40] = 0  # the enclosed space
    contour = np.zeros_like(ring)
    contour[0, 10:50, 29:31] = 1  # cuts between the four objects
    contour[0, 29:31, 10:50] = 1
    labels = instances_from_maps(ring, contour, per_slice=True, min_seed_size=4, min_size=10, fill_holes=1)
    assert len(np.unique(labels)) == 5
    assert not labels[0, 20:40, 20:40].any()


def test_a_model_fills_holes_unless_its_training_objects_hold_them():
    from napari_plantbio_train.inference.postprocess import hole_share, params_from_truth

    _, lens = _ellipse_with_grains()
    solid = lens.astype(np.uint16)
    holed = solid.copy()
    holed[:, 31:50, 46:64] = 0  # a grain left unpainted: a real hole of the object
    assert hole_share(solid) == 0 and hole_share(holed) > 0.01
    assert params_from_truth(solid, per_slice=False)["fill_holes"] == 1
    assert params_from_truth(holed, per_slice=False)["fill_holes"] == 0
    # Touching objects around a gap do not count as holes.
    four = np.zeros((1, 60, 60), np.uint16)
    four[0, 10:30, 10:30], four[0, 10:30, 30:50], four[0, 30:50, 10:30], four[0, 30:50, 30:50] = 1, 2, 3, 4
    four[0, 20:40, 20:40] = 0
    assert hole_share(four) == 0


def test_the_predict_command_and_the_dock_carry_every_setting():
    """A setting the dock changes reaches the child's predict command, and the command's options reach the engine."""
    from napari_plantbio_train.cli.commands import _label_settings
    from napari_plantbio_train.cli.parser import POSTPROCESS_OPTIONS, build_parser
    from napari_plantbio_train.inference.label import LabelSettings
    from napari_plantbio_train.job.kinds import POSTPROCESS_DEFAULTS
    from napari_plantbio_train._widgets.label_widget import predict_options

    assert set(POSTPROCESS_OPTIONS) <= set(POSTPROCESS_DEFAULTS)
    changed = {"fill_holes": 0.0, "seed_prominence": 7.5}
    options = predict_options(LabelSettings(postprocess=changed))
    args = build_parser().parse_args(["predict", "--model", "m", "--image", "i.tif", "--output", "o.tif", *options])
    assert _label_settings(args).postprocess == changed


def test_the_foreground_threshold_still_decides_which_objects_exist():
    foreground, _ = _ellipse_with_grains()
    foreground *= 0.8  # confident cores, yet below a threshold at its top
    labels = instances_from_maps(foreground, np.zeros_like(foreground), per_slice=False, seed_threshold=0.5,
                                 fg_threshold=0.9, seed_prominence=2, fill_holes=1)
    assert not labels.any(), "a filled hole is no object of its own"
