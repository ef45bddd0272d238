"""Stacks in and out: the one reader (``stacks.read``), block-wise outputs, atomic files, the checks an image or
a labels array must pass, the JSON-lines wire format of a job's events, and the synthetic sample stack."""
