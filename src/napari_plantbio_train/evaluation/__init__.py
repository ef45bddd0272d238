"""Scores of a segmentation against ground truth, for validation during training and evaluation after it."""
