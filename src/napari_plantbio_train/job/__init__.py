"""A job as plain values: its fields (``TrainConfig``), what each mode means (``kinds``), the events a running
job reports, and napari's scale against the job's voxel size. No torch, no Qt."""
