# The two commands of the quick start: `make demo` and `make test`. Each creates the virtual
# environment on first use (Python 3.10+ and pip are all a fresh machine needs; with a C
# compiler, the scheduling core is compiled with mypyc: setup.py).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# The compiled core again, when its sources changed since (a stale one would not be used).
COMPILED := $(VENV)/.compiled
# The core's own tests, run a second time on its Python source (the reference).
CORE_TESTS := tests/test_core.py tests/test_core_parts.py tests/test_core_stateful.py tests/test_baseline.py \
	tests/test_timeline.py tests/test_listing.py tests/test_sim.py

.PHONY: demo test bench clean gpu-carry perf-analyzer

$(STAMP): setup.cfg pyproject.toml setup.py
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 10) and "Python 3.10+ is required")'
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test,bench,gateway,torch,nnef]'
	@touch $(STAMP) $(COMPILED)

$(COMPILED): $(STAMP) $(wildcard controller/*.py common/*.py)
	$(PY) -m pip install --quiet --no-deps -e .
	@touch $(COMPILED)

demo: $(COMPILED)
	$(VENV)/bin/clockwork-bench demo $(ARGS)

test: $(COMPILED)
	$(PY) -m pytest -q $(ARGS)
ifeq ($(ARGS),)
	CLOCKWORK_PURE_PYTHON=1 $(PY) -m pytest -q $(CORE_TESTS)
endif

# The folder a lent GPU machine (no network) needs: wheels for Python 3.12 and PyCUDA's sdist.
gpu-carry: $(STAMP)
	$(PY) -m clockwork.bench.gpu_check --prepare

# Triton's perf_analyzer with the C/C++ runtime it needs, in ~/.cache/clockwork/perf-analyzer.
perf-analyzer: $(STAMP)
	$(PY) -m clockwork.bench.perf_analyzer prepare

clean:
	rm -rf $(VENV) *.egg-info .pytest_cache
