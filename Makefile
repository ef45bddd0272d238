# Two entry points for a fresh machine: `make demo` and `make test`.
# Both create .venv when missing and install what they need; torch is pinned here (development only),
# while pyproject.toml keeps the open range users need.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
TORCH_PIN := torch==2.13.0
# Debian packages napari's OpenGL canvas and Qt6 need on a headless machine (virtual display + Mesa).
APT_PACKAGES := xvfb xauth libgl1 libegl1 libgl1-mesa-dri libglx-mesa0 libxkbcommon-x11-0 \
	libxcb-cursor0 libxcb-icccm4 libxcb-image0 libxcb-keysyms1 libxcb-randr0 libxcb-render-util0 \
	libxcb-shape0 libxcb-xfixes0 libxcb-xinerama0 libxcb-xinput0 libdbus-1-3 libfontconfig1
STAMP := $(VENV)/.installed

.PHONY: demo test system-deps install clean benchmarks

system-deps:
	@if ! command -v xvfb-run >/dev/null 2>&1 || ! ldconfig -p | grep -q libxcb-cursor; then \
		SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
		$$SUDO apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq $(APT_PACKAGES) >/dev/null; \
	fi

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

$(STAMP): $(BIN)/python pyproject.toml Makefile
	$(BIN)/pip install -q $(TORCH_PIN)
	$(BIN)/pip install -q -e ".[qt,testing]" $(TORCH_PIN)
	touch $(STAMP)

install: system-deps $(STAMP)

test: install
	QT_QPA_PLATFORM=xcb $(BIN)/python -m pytest -q tests

demo: install
	xvfb-run -a -s "-screen 0 1600x1000x24" $(BIN)/python docs/demo.py

# Long runs reported in issues, not CI; run them alone on the machine (see benchmarks/*.py).
benchmarks: install
	$(BIN)/pip install -q -e ".[qt,testing,benchmarks]" $(TORCH_PIN)
	$(BIN)/python benchmarks/train_real.py
	$(BIN)/python benchmarks/predict_vs_monai.py
	$(BIN)/python benchmarks/label_memory.py
	$(BIN)/python benchmarks/label_accuracy.py

clean:
	rm -rf $(VENV) build dist .pytest_cache
