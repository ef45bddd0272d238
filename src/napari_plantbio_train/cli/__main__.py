"""``python -m napari_plantbio_train.cli``: the program itself.
"""

from __future__ import annotations

from . import entry

if __name__ == "__main__":
    entry()
