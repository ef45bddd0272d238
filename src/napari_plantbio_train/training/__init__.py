"""Training a model: targets and trusted voxels from labels, windows, the loop, validation, data-parallel ranks."""
