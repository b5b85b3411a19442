# Two entry points, each sets itself up on a fresh machine:
#   make demo   - the main job: pretrain on the embedded E. coli genome, fine-tune on UCI splice
#                 junctions (pretrained vs from scratch), show the learned tokens; < 10 min on 2 CPU cores
#   make test   - ruff (errors only), then the test suite (CI runs exactly this)
#   make bench  - the speed suite (benchmarks/suite.py: matmul peak, MergeDNA vs peer encoders, length
#                 scaling, sampler throughput): ~40 min on 2 cores, writes benchmarks/results/suite.{json,md}
# Both create .venv on first use. torch is pinned: `pip install torch==2.13.0` takes the CPU build.

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.mergedna-installed
TORCH ?= torch==2.13.0
DEMO_OUT ?= mergedna-demo

.PHONY: demo test bench venv clean-venv

venv: $(STAMP)

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet "$(TORCH)"
	$(BIN)/python -m pip install --quiet -e ".[test,lora,hf,parquet]"
	@touch $(STAMP)

demo: $(STAMP)
	$(BIN)/mergedna demo --out $(DEMO_OUT)

test: $(STAMP)
	$(BIN)/ruff check src tests benchmarks scripts
	$(BIN)/python -m pytest -q

bench: $(STAMP)
	$(BIN)/python benchmarks/suite.py --compile $(BENCH_ARGS)

clean-venv:
	rm -rf $(VENV)
