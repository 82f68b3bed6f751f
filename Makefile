# terraseg: `make demo` and `make test` do all set-up themselves on a fresh machine.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.terraseg-installed
# torch/torchvision are pinned to the releases that lie on this machine's disk
# (pip takes them from there, offline and fast). Override on other machines:
#   make install TORCH_SPEC="torch torchvision"
TORCH_SPEC ?= torch==2.14.1 torchvision==0.29.1
PYTEST_ARGS ?=
# pytest-xdist processes for `make test`, each test file on one of them (its fixtures built
# once) and one BLAS/OpenMP thread each: 1.7x faster than one process on 2 cores
TEST_WORKERS ?= 2
DEMO_DIR ?= demo-out
DEMO_SIZE ?= 2048

.PHONY: install test test-slow demo lint typecheck bench bench-quick clean

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet $(TORCH_SPEC)
	$(BIN)/python -m pip install --quiet -e '.[dev,notebooks,onnx]'
	touch $(STAMP)

test: install
	OMP_NUM_THREADS=$${OMP_NUM_THREADS:-1} $(BIN)/python -m pytest -n $(TEST_WORKERS) --dist loadfile $(PYTEST_ARGS); rc=$$?; \
	  if [ $$rc -eq 5 ]; then echo "make test: pytest collected no tests" >&2; fi; exit $$rc

test-slow: install
	$(BIN)/python -m pytest -m slow $(PYTEST_ARGS)

demo: install
	$(BIN)/terraseg synth $(DEMO_DIR)/city.tif --size-px $(DEMO_SIZE) --seed 7 --overwrite
	$(BIN)/terraseg run workflows/demo.yaml --overwrite
	$(BIN)/terraseg evaluate $(DEMO_DIR)/run/city/classes.tif $(DEMO_DIR)/city.truth.tif --task pixels
	$(BIN)/terraseg evaluate $(DEMO_DIR)/run/city/city.gpkg $(DEMO_DIR)/city.truth.gpkg --task buildings
	$(BIN)/terraseg evaluate $(DEMO_DIR)/run/city/city.gpkg $(DEMO_DIR)/city.truth.gpkg --task roads

lint: install
	$(BIN)/ruff check src tests benchmarks notebooks
	$(BIN)/mypy
	$(BIN)/lint-imports

bench: install
	$(BIN)/python benchmarks/suite.py

bench-quick: install
	$(BIN)/python benchmarks/suite.py --quick --out benchmarks/results-quick.json

clean:
	rm -rf $(VENV) $(DEMO_DIR) .pytest_cache .mypy_cache .ruff_cache .hypothesis
