# camlens: `make demo` and `make test` work on a fresh machine (Python >= 3.10, PyPI reachable).
# The registry's standard torch/torchvision wheels are used; the machine's local wheel folder
# and pip config are turned off for these installs (see DEVELOPERS.md).

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := PIP_FIND_LINKS= PIP_CONFIG_FILE=/dev/null $(PY) -m pip
TORCH := torch==2.13.0 torchvision==0.28.0
# pytest-xdist workers for `make test` (tests/conftest.py keeps files with shared fixtures whole)
TEST_WORKERS ?= 2

.PHONY: demo test lint bench examples clean

$(PY):
	$(PYTHON) -m venv $(VENV)

$(VENV)/.demo: $(PY) pyproject.toml
	$(PIP) install -q $(TORCH) -e '.[demo]'
	touch $@

$(VENV)/.test: $(PY) pyproject.toml
	$(PIP) install -q $(TORCH) -e '.[test]'
	touch $@

demo: $(VENV)/.demo
	$(VENV)/bin/camlens demo --out camlens-demo

lint: $(VENV)/.test
	$(PY) -m ruff check src tests bench examples

test: $(VENV)/.test
	$(PY) -m ruff check src tests bench examples
	$(PY) -m pytest -q -n $(TEST_WORKERS)

bench: $(VENV)/.test
	$(PY) bench/bench_gradcam.py

# Regenerate the pictures under docs/images from the task examples (a few minutes on CPU).
examples: $(VENV)/.test
	for e in detection segmentation embedding video vision_transformer signal_1d captioning \
		keras_vgg16_gradcam keras_digits_cam augment_picture; do \
		$(PY) examples/$$e.py --out docs/images || exit 1; done

clean:
	rm -rf $(VENV) camlens-demo build src/*.egg-info
