# Everything sets itself up: `make demo` and `make test` work on a fresh machine.
PY      ?= python3
VENV    ?= .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed-$(shell cat setup.cfg constraints.txt | cksum | cut -d' ' -f1)

.PHONY: setup demo test test-all bench clean

setup: $(STAMP)

$(STAMP): setup.cfg constraints.txt pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip setuptools wheel
	# torch first, pinned to the local CPU wheel, so nothing later pulls a CUDA build
	$(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -c constraints.txt -e ".[cpu,torch,keras,ray,dev]" tensorflow-cpu
	touch $(STAMP)

demo: setup
	$(BIN)/onnxmbs analyze models/resnet20_digits.onnx
	$(BIN)/onnxmbs plan models/resnet20_digits.onnx --data models/digits_calib --preprocess raw -o out/plan.json

test: setup
	$(BIN)/python -m pytest

test-all: setup
	$(BIN)/python -m pytest -m "slow or not slow"

bench: setup
	$(BIN)/python tools/bench_statistics.py --bound

clean:
	rm -rf $(VENV) out build *.egg-info
