"""The built-in sample: reproducible, two kinds of organelles, many of them touching, offered by napari."""

from __future__ import annotations

import numpy as np

from napari_plantbio_train.io.synthetic import make_stack


def _touching_pairs(instances: np.ndarray) -> set[tuple[int, int]]:
    pairs = set()
    for axis in (1, 2):
        a, b = instances, np.roll(instances, 1, axis=axis)
        both = (a > 0) & (b > 0) & (a != b)
        pairs |= {tuple(sorted(p)) for p in zip(a[both].tolist(), b[both].tolist())}
    return pairs


def test_same_seed_same_stack_other_seed_other_stack():
    a, b, c = make_stack(seed=3), make_stack(seed=3), make_stack(seed=4)
    assert np.array_equal(a.image, b.image) and np.array_equal(a.instances, b.instances)
    assert not np.array_equal(a.instances, c.instances)


def test_two_kinds_of_touching_organelles_with_consistent_labels():
    stack = make_stack()
    assert stack.image.dtype == np.uint8 and stack.image.shape == stack.semantic.shape == stack.instances.shape
    assert set(np.unique(stack.semantic)) == {0, 1, 2}
    ids = np.unique(stack.instances)[1:]
    assert ids.size >= 10
    for label in ids:  # every organelle is of one kind
        assert np.unique(stack.semantic[stack.instances == label]).size == 1
    assert np.array_equal(stack.semantic > 0, stack.instances > 0)
    assert len(_touching_pairs(stack.instances)) >= 5
    # Organelles differ from the cytoplasm in brightness: chloroplasts are darker on average.
    assert stack.image[stack.semantic == 1].mean() < stack.image[stack.semantic == 0].mean() - 40


def test_napari_offers_the_sample(make_napari_viewer):
    viewer = make_napari_viewer()
    viewer.open_sample("napari-plantbio-train", "organelles")
    names = [layer.name for layer in viewer.layers]
    assert names == ["organelles EM", "organelles classes", "organelles instances"]
    assert tuple(viewer.layers["organelles EM"].scale) == (40.0, 8.0, 8.0)
    assert viewer.layers["organelles instances"].data.max() >= 10
