"""Tools around segmentation that need no network: colour-painted labels to ids, surface meshes."""
