"""Colour-painted labels to ids and back (plain numpy), and the conversion dock in a real napari viewer."""

from __future__ import annotations

import numpy as np
import pytest

from napari.layers import Labels

from napari_plantbio_train.io.checks import looks_rgb as looks_like_colour
from napari_plantbio_train.tools.colour_labels import colours_from_labels, labels_from_colours

ColourLabelsWidget = pytest.importorskip("napari_plantbio_train._widgets.colour_widget").ColourLabelsWidget

RED, GREEN, BLUE = (200, 0, 0), (0, 180, 0), (0, 0, 255)
# Ids follow the packed value r << 16 | g << 8 | b: blue, then green, then red.
EXPECTED_MAP = {0: (0, 0, 0), 1: BLUE, 2: GREEN, 3: RED}


def _painted(shape: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    """A colour image with three painted regions on black, and the ids it should give."""
    ids = np.zeros(shape, np.uint8)
    ids[..., 1:3, 1:4] = 3  # red
    ids[..., 4:6, 0:2] = 2  # green
    ids[..., 0, 5:] = 1  # blue
    palette = np.array([EXPECTED_MAP[i] for i in range(4)], np.uint8)
    return palette[ids], ids


@pytest.mark.parametrize("shape", [(6, 7), (4, 6, 7)], ids=["2d", "3d"])
def test_round_trip_gives_exact_ids_and_map(shape):
    rgb, expected = _painted(shape)
    ids, colour_map = labels_from_colours(rgb)
    assert ids.dtype == np.uint8 and ids.shape == shape
    np.testing.assert_array_equal(ids, expected)
    assert colour_map == EXPECTED_MAP
    np.testing.assert_array_equal(colours_from_labels(ids, colour_map), rgb)


def test_alpha_is_ignored_and_background_can_be_chosen():
    rgb, expected = _painted((6, 7))
    alpha = np.random.default_rng(0).integers(0, 256, rgb.shape[:-1] + (1,), dtype=np.uint8)
    ids, colour_map = labels_from_colours(np.concatenate([rgb, alpha], axis=-1))
    np.testing.assert_array_equal(ids, expected)
    assert colour_map == EXPECTED_MAP

    ids, colour_map = labels_from_colours(rgb, background=RED)
    assert colour_map == {0: RED, 1: (0, 0, 0), 2: BLUE, 3: GREEN}
    assert (ids[expected == 3] == 0).all() and (ids[expected == 0] == 1).all()
    np.testing.assert_array_equal(colours_from_labels(ids, colour_map), rgb)


def test_whole_valued_floats_and_wider_ints_are_accepted():
    rgb, expected = _painted((6, 7))
    for data in (rgb.astype(np.float32), rgb.astype(np.int64)):
        ids, colour_map = labels_from_colours(data)
        np.testing.assert_array_equal(ids, expected)
        assert colour_map == EXPECTED_MAP


def test_id_dtype_grows_with_the_number_of_colours():
    values = np.arange(1, 301, dtype=np.uint32)  # 300 colours: more than a uint8 id holds
    rgb = np.stack([values >> 16, (values >> 8) & 0xFF, values & 0xFF], axis=-1).astype(np.uint8)[None]
    ids, colour_map = labels_from_colours(rgb)
    assert ids.dtype == np.uint16 and len(colour_map) == 301
    np.testing.assert_array_equal(ids[0], np.arange(1, 301))
    np.testing.assert_array_equal(colours_from_labels(ids, colour_map), rgb)


@pytest.mark.parametrize("data, message", [
    (np.zeros((8, 8), np.uint8), r"channels \(3 RGB or 4 RGBA\) on the last axis.*got shape \(8, 8\)"),
    (np.zeros((4, 8, 8), np.uint8), r"got shape \(4, 8, 8\)"),
    (np.linspace(0, 300, 192).reshape(8, 8, 3), "got float64 values from 0.0 to 300.0"),
    (np.full((8, 8, 3), -1, np.int16), "got int16 values from -1 to"),
    (np.full((8, 8, 3), 0.5, np.float32), "not whole numbers .multiply a 0..1 image by 255"),
    (np.zeros((8, 8, 3), bool), "got dtype bool"),
])
def test_non_colour_inputs_are_refused_with_what_was_expected(data, message):
    with pytest.raises(ValueError, match="expected a colour image") as info:
        labels_from_colours(data)
    assert info.match(message)


def test_too_many_colours_are_refused():
    values = np.arange(70_000, dtype=np.uint32)
    rgb = np.stack([values >> 16, (values >> 8) & 0xFF, values & 0xFF], axis=-1).astype(np.uint8)[None]
    with pytest.raises(ValueError, match="at most 65535 colours .* got 69999"):
        labels_from_colours(rgb)


def test_ids_missing_from_the_map_are_refused():
    with pytest.raises(ValueError, match=r"ids \[4, 9\] are not in the colour map"):
        colours_from_labels(np.array([[0, 1, 4], [9, 3, 2]], np.uint8), EXPECTED_MAP)


def test_looks_like_colour():
    # The package's one RGB rule (napari's: two axes longer than 30 before 3 or 4 channels), kept to uint8.
    assert looks_like_colour(np.zeros((31, 31, 3), np.uint8)) and looks_like_colour(np.zeros((2, 31, 31, 4), np.uint8))
    assert not looks_like_colour(np.zeros((31, 31, 3), np.uint16))
    assert not looks_like_colour(np.zeros((5, 5, 3), np.uint8))  # five slices of 5 x 3, not a colour image
    assert not looks_like_colour(np.zeros((31, 31), np.uint8)) and not looks_like_colour(np.zeros((3, 31, 31), np.uint8))
    assert not looks_like_colour([1, 2, 3])


# ----- the dock in a real viewer -------------------------------------------------------------------------------
@pytest.fixture
def dock(make_napari_viewer):
    viewer = make_napari_viewer()
    widget = ColourLabelsWidget(viewer)
    viewer.window.add_dock_widget(widget, name="Colour image to labels")
    return viewer, widget


def test_convert_keeps_ids_scale_and_colours(dock):
    viewer, widget = dock
    rgb, expected = _painted((4, 6, 7))
    viewer.add_image(np.zeros((4, 6, 7), np.uint8), name="em")  # grey: not offered
    painted = viewer.add_image(rgb, name="old labels", rgb=True, scale=(50.0, 5.0, 5.0), translate=(10.0, 0, 2.0))
    assert list(widget.image_picker.choices) == [painted]

    labels = widget.convert()
    assert isinstance(labels, Labels) and labels is viewer.layers[-1] and labels.name == "old labels labels"
    np.testing.assert_array_equal(labels.data, expected)
    assert labels.data.dtype == np.uint8
    np.testing.assert_allclose(labels.scale, (50.0, 5.0, 5.0))
    np.testing.assert_allclose(labels.translate, (10.0, 0.0, 2.0))
    assert labels.metadata["colour_map"] == EXPECTED_MAP
    for i, colour in EXPECTED_MAP.items():
        shown = labels.colormap.map(i)
        if i == 0:
            assert shown[3] == 0, "the background is transparent"
        else:
            np.testing.assert_allclose(shown, (*np.array(colour) / 255, 1.0), atol=1e-6)
    assert labels.colormap.map(42)[3] == 0, "ids painted later and not in the map are transparent"
    assert "3 colours as ids 1..3 (uint8)" in widget.status.text()


def test_problems_are_shown_in_the_dock(dock):
    viewer, widget = dock
    assert widget.convert() is None and "Pick an RGB Image layer" in widget.status.text()
    values = np.arange(70_000, dtype=np.uint32).reshape(1, 70_000)
    noise = np.stack([values >> 16, (values >> 8) & 0xFF, values & 0xFF], axis=-1).astype(np.uint8)
    viewer.add_image(noise, name="photo", rgb=True)
    assert widget.convert() is None
    assert "'photo' cannot be converted" in widget.status.text() and "at most 65535" in widget.status.text()
    assert [layer.name for layer in viewer.layers] == ["photo"]
    viewer.layers.clear()
    assert list(widget.image_picker.choices) == [] and widget.convert() is None
