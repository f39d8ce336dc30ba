# Everything sets itself up: `make demo` and `make test` work on a fresh machine.
# `make demo` installs only what the demo runs (onnx, onnxruntime, the package) into its own light
# virtualenv; `make test` installs the full set (PyTorch, TensorFlow, tf2onnx) into .venv.
PY        ?= python3
VENV      ?= .venv
BIN       := $(VENV)/bin
PINS      := $(shell cat setup.cfg constraints.txt | cksum | cut -d' ' -f1)
STAMP     := $(VENV)/.installed-$(PINS)
DEMO_VENV ?= .venv-demo
DEMO_BIN  := $(DEMO_VENV)/bin
DEMO_STAMP := $(DEMO_VENV)/.installed-$(PINS)

# A second light venv with the base + cpu + dev extras (no torch, no TensorFlow): the suite must pass there.
LIGHT   ?= .venv-light
LIGHT_STAMP := $(LIGHT)/.installed-$(PINS)
FRAMEWORKS := torch tensorflow keras tf2onnx onnxscript

.PHONY: setup setup-demo demo test test-light test-all bench clean

setup: $(STAMP)

setup-demo: $(DEMO_STAMP)

$(DEMO_STAMP): setup.cfg constraints.txt pyproject.toml
	test -x $(DEMO_BIN)/python || $(PY) -m venv $(DEMO_VENV)
	$(DEMO_BIN)/python -m pip install -q --upgrade pip setuptools wheel
	$(DEMO_BIN)/python -m pip install -q -c constraints.txt -e ".[cpu]"
	touch $(DEMO_STAMP)

$(STAMP): setup.cfg constraints.txt pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip setuptools wheel
	# torch first, pinned to the local CPU wheel, so nothing later pulls a CUDA build
	$(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -c constraints.txt -e ".[cpu,torch,keras,ray,dev]" tensorflow-cpu
	touch $(STAMP)

demo: setup-demo
	$(DEMO_BIN)/onnxmbs analyze models/resnet20_digits.onnx
	$(DEMO_BIN)/onnxmbs plan models/resnet20_digits.onnx --data models/digits_calib -o out/plan.json

test: setup
	$(BIN)/python -m pytest

$(LIGHT_STAMP): setup.cfg constraints.txt pyproject.toml
	test -x $(LIGHT)/bin/python || $(PY) -m venv $(LIGHT)
	$(LIGHT)/bin/python -m pip install -q --upgrade pip setuptools wheel
	$(LIGHT)/bin/python -m pip install -q -c constraints.txt -e ".[cpu,dev]"
	touch $(LIGHT_STAMP)

# The suite must collect and pass without torch/TensorFlow: their tests skip.
test-light: $(LIGHT_STAMP)
	$(LIGHT)/bin/python -c "import importlib.util as u, sys; found = [m for m in sys.argv[1:] if u.find_spec(m)]; \
	sys.exit(f'{found} installed in $(LIGHT): test-light is for the base + cpu extras only' if found else 0)" $(FRAMEWORKS)
	$(LIGHT)/bin/python -m pytest

test-all: setup
	$(BIN)/python -m pytest -m "slow or not slow"

bench: setup
	$(BIN)/python tools/bench_statistics.py --bound

clean:
	rm -rf $(VENV) $(DEMO_VENV) $(LIGHT) out build *.egg-info
