"""Where benchmark reports go: appended to benchmarks/results/<name>.txt, one block per run."""

from __future__ import annotations

from pathlib import Path

FOLDER = Path(__file__).resolve().parent / "results"


def append(name: str, lines: list[str]) -> Path:
    path = FOLDER / f"{name}.txt"
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as handle:
        handle.write("\n".join(lines) + "\n\n")
    return path
