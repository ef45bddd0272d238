"""Train, watch and use segmentation networks on electron-microscopy stacks inside napari.

Kept free of imports on purpose: the command line, the manifest scan npe2 does at napari start-up and the
engine's tests all import this package, and none of them should pay for (or need) Qt or torch.
"""

__version__ = "0.1.0"
