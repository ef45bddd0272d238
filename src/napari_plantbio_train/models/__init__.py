"""The network (``network.UNet``), its loss, its intensity scale, and named models on disk (``store``), shared as
bioimage.io packages (``exchange``)."""
