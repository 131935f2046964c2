# LookThrough: `make demo` sets up and runs the main job; `make test` runs the whole test suite.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
STAMP  := $(VENV)/.lookthrough-installed
NATIVE := $(shell find kernels -name '*.cpp' -o -name '*.cu' -o -name '*.h' -o -name '*.cuh' 2>/dev/null) CMakeLists.txt pyproject.toml

.PHONY: setup demo test bench clean help
help:  ## list targets
	@grep -E '^[a-z]+:.*##' $(MAKEFILE_LIST) | sed 's/:.*##/\t/'

setup: $(STAMP)  ## create .venv, install pinned deps, build the C++ core (editable)

$(STAMP): requirements/*.txt $(NATIVE)
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q -r requirements/runtime.txt -r requirements/build.txt -r requirements/test.txt -r requirements/train.txt
	$(PIP) install -q --no-deps -r requirements/nodeps.txt
	$(PIP) install -q --no-build-isolation --no-deps -e .
	touch $@

demo: setup  ## the main job: enroll the astronaut, identify her flipped and masked, camera man unknown
	$(PY) -m sdk demo --out out/demo

test: setup  ## the whole test suite
	$(PY) -m pytest -q

DATA ?= ../shared/data

bench: setup  ## every benchmark, JSON into benchmarks/results/ (DATA=../shared/data for real mask templates)
	mkdir -p benchmarks/results
	$(PY) -m sdk bench -q --out benchmarks/results/sdk_bench.json > /dev/null
	$(PY) benchmarks/bench_kernels.py --out benchmarks/results/kernels.json
	$(PY) benchmarks/bench_embed.py --out benchmarks/results/embed.json > /dev/null
	$(PY) benchmarks/bench_segmenter.py --out benchmarks/results/segmenter.json > /dev/null
	$(PY) benchmarks/bench_inpainter.py --out benchmarks/results/inpainter.json
	$(PY) benchmarks/bench_synthesis.py $(if $(wildcard $(DATA)/mask_templates),--templates $(DATA)/mask_templates) \
		--out benchmarks/results/synthesis.json > /dev/null

clean:  ## remove build outputs (keeps .venv)
	rm -rf build out *.egg-info
