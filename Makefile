# One command each, on a fresh machine with Python >= 3.10:
#   make example   set up .venv and run the main example on real data (JapaneseVowels)
#   make test      set up .venv and run the whole test suite (what .ci/run runs)
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: setup example test test-fast bench

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]'
	touch $@

setup: $(VENV)/.installed

example: setup
	$(PY) examples/japanese_vowels.py

test: setup
	$(PY) -m pytest -q

test-fast: setup
	$(PY) -m pytest -q -m "not slow"

bench: setup
	$(PY) benchmarks/bench_qat_speed.py
	$(PY) benchmarks/bench_rewrite.py
	$(PY) benchmarks/bench_export.py
