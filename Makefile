# One command each, on a fresh machine with Python >= 3.10:
#   make example   set up .venv and run the main example on real data (JapaneseVowels)
#   make test      set up .venv and run the whole test suite (what .ci/run runs; 25 + 2 generated models)
#   make fuzz      a longer property-based run (40 + 6 generated models)
#   make fuzz-long the long run (300 + 40 generated models; an hour or more on 2 cores)
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: setup example test test-fast fuzz fuzz-long bench

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test,micro]'
	touch $@

setup: $(VENV)/.installed

example: setup
	$(PY) examples/japanese_vowels.py

test: setup
	$(PY) -m pytest -q -n 2 --dist loadfile --durations=30

test-fast: setup
	$(PY) -m pytest -q -n 2 --dist loadfile -m "not slow"

fuzz: setup
	LT_FUZZ_EXAMPLES=40 LT_FUZZ_EXPORT_EXAMPLES=6 $(PY) -m pytest -q tests/test_fuzz.py

fuzz-long: setup
	LT_FUZZ_EXAMPLES=300 LT_FUZZ_EXPORT_EXAMPLES=40 $(PY) -m pytest -q tests/test_fuzz.py

bench: setup
	$(PY) benchmarks/bench_qat_speed.py
	$(PY) benchmarks/bench_rewrite.py
	$(PY) benchmarks/bench_export.py
	$(PY) benchmarks/bench_deploy_latency.py
	$(PY) benchmarks/bench_scale.py
	$(PY) benchmarks/bench_memory.py
