"""Labelling again after a round (inference/relabel.py): near the corrections first, with the very result a
whole-stack run gives there, the whole stack afterwards, never over what the user reviewed."""

from __future__ import annotations

import numpy as np

from napari_plantbio_train.inference.blockwise import count_windows, touching_windows
from napari_plantbio_train.inference.label import LabelSettings, label_stack
from napari_plantbio_train.inference.relabel import NEAR_MOST, merge_relabelled, near_regions, round_regions
from napari_plantbio_train.job.events import run_to_end

# Blocks of about a quarter of the 4 x 192 x 192 crop, and thresholds at which the 20-iteration model finds objects.
SETTINGS = LabelSettings(block_voxels=60_000, precision="fp32",
                         postprocess={"fg_threshold": 0.3, "seed_threshold": 0.0, "min_size": 1})


def same_partition(a: np.ndarray, b: np.ndarray) -> bool:
    """The same objects, whatever their ids: every id of one side meets exactly one id of the other."""
    pairs = np.unique(np.stack([a.ravel(), b.ravel()]), axis=1)
    return len(np.unique(pairs[0])) == len(np.unique(pairs[1])) == pairs.shape[1]


def test_relabelling_near_corrections_equals_a_full_relabel_in_its_blocks(tiny_models, chloroplast_crop):
    image, _ = chloroplast_crop
    full, _ = run_to_end(label_stack("chl", image, models_dir=tiny_models, settings=SETTINGS, probabilities=True))
    assert full.labels.max() > 0 and len(full.cores) > 2
    reviewed = np.zeros(image.shape, bool)
    reviewed[:, 20:50, 20:50] = True  # where the user corrected
    regions = near_regions(image.shape, reviewed, grow=(0, 8, 8))
    near, _ = run_to_end(label_stack("chl", image, models_dir=tiny_models, settings=SETTINGS, probabilities=True,
                                     near=regions))
    assert len(near.cores) >= 1
    touched = np.zeros(image.shape, bool)
    for core in near.cores:
        where = tuple(slice(a, b) for a, b in core)
        touched[where] = True
        np.testing.assert_array_equal(near.probabilities[(slice(None), *where)],
                                      full.probabilities[(slice(None), *where)])
    grown = np.zeros(image.shape, bool)
    grown[:, 12:58, 12:58] = True
    assert np.array_equal(touched, grown), "the near cores are the corrections' boxes, not whole grid blocks"
    assert same_partition(near.labels[touched], full.labels[touched])
    assert not near.labels[~touched].any(), "nothing is written outside the blocks it labels"

    rest, _ = run_to_end(label_stack("chl", image, models_dir=tiny_models, settings=SETTINGS, near=regions, far=True,
                                     probabilities=True))
    cover = touched.astype(int)
    for core in rest.cores:
        where = tuple(slice(a, b) for a, b in core)
        cover[where] += 1
        np.testing.assert_array_equal(rest.probabilities[(slice(None), *where)],
                                      full.probabilities[(slice(None), *where)])
    assert (cover == 1).all(), "the two parts tile the stack"
    assert not rest.labels[touched].any() and same_partition(rest.labels[~touched], full.labels[~touched])


def test_merging_keeps_what_the_user_reviewed():
    current = np.zeros((1, 20, 40), np.uint32)
    current[0, 2:8, 2:8] = 5  # the user's painted object
    reviewed = current > 0
    new = np.zeros_like(current)
    new[0, 2:8, 2:9] = 1  # the model's version of the same object: mostly in the reviewed region, dropped
    new[0, 12:18, 2:8] = 2
    new[0, 12:18, 15:25] = 3  # cut by the first part's core face at x = 20
    left = ((0, 1), (0, 20), (0, 20))
    after = merge_relabelled(current, new, [left], reviewed)
    assert after == 9 and (current[reviewed] == 5).all() and not current[0, 2:8, 8].any()
    assert set(np.unique(current[0, 12:18, :20])) == {0, 7, 8}
    whole = np.zeros_like(current)
    whole[0, 12:18, 15:25] = 1  # the whole stack's pass, labelled afterwards: one object where the first cut it
    whole[0, 2:8, 2:8] = 2  # its version of the reviewed object: dropped again
    merge_relabelled(current, whole, [((0, 1), (0, 20), (0, 40))], reviewed)
    assert (current[reviewed] == 5).all() and set(np.unique(current)) == {0, 5, 9}
    assert (current[0, 12:18, 15:25] == 9).all() and not current[0, 12:18, 2:8].any(), "the first part replaced"


def test_near_regions_cover_reviewed_voxels_and_queued_objects():
    labels = np.zeros((2, 50, 50), np.uint16)
    labels[:, 30:40, 30:45] = 4
    reviewed = np.zeros(labels.shape, bool)
    reviewed[0, 5:10, 5:10] = True
    regions = near_regions(labels.shape, reviewed, labels, ids=[4, 9], grow=(1, 3, 3))
    assert regions == [((0, 2), (2, 13), (2, 13)), ((0, 2), (27, 43), (27, 48))]


def test_a_sprawling_queued_object_waits_for_the_whole_stacks_pass():
    labels = np.zeros((4, 200, 200), np.uint16)
    labels[:, 10:20, 10:20] = 2  # a compact object next in the queue
    labels[:, 5:195, 100] = 7  # a thin one whose box spans the stack
    labels[:, 190, 5:195] = 7
    reviewed = np.zeros(labels.shape, bool)
    reviewed[1, 150:160, 20:30] = True
    regions = round_regions(labels.shape, reviewed, labels, [7, 2], (4, 32, 32), overlap=0.5)
    assert regions[0] == ((0, 4), (10, 20), (10, 20)), "the compact object, not the sprawling one"
    assert regions[1:] == [((0, 3), (142, 168), (12, 38))], "then the ring around the correction"
    windows = set().union(*(touching_windows(r, labels.shape, (4, 32, 32), 0.5) for r in regions))
    assert len(windows) <= NEAR_MOST * count_windows([(0, 4), (0, 200), (0, 200)], (4, 32, 32), 0.5)


def test_a_rounds_first_boxes_are_budgeted_by_the_windows_they_share():
    """Boxes side by side need mostly the same windows, so they fit a budget their separate costs would not;
    a box as small elsewhere needs windows of its own and waits for the whole stack's pass."""
    labels = np.zeros((4, 256, 256), np.uint16)
    for i, x in enumerate((40, 52, 64), start=1):  # three small objects side by side
        labels[:, 40:48, x:x + 8] = i
    labels[:, 200:208, 200:208] = 4  # one as small, far away
    window, overlap = (4, 64, 64), 0.5
    alone = len(touching_windows(((0, 4), (40, 48), (40, 48)), labels.shape, window, overlap))
    together = len(touching_windows(((0, 4), (40, 48), (40, 72)), labels.shape, window, overlap))
    whole = count_windows([(0, 4), (0, 256), (0, 256)], window, overlap)
    most = (together + 0.5) / whole
    assert 3 * alone > together + 0.5, "the three separately would not fit the budget"
    regions = round_regions(labels.shape, None, labels, [1, 2, 3, 4], window, overlap=overlap, most=most)
    assert regions == [((0, 4), (40, 48), (x, x + 8)) for x in (40, 52, 64)]
