# The book in three commands: `make test` (what CI runs), `make book`, `make lab`.
# Each creates .venv from requirements.txt when it is missing.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.cnetlib-installed
CHAPTERS_PY := $(sort $(wildcard chapters/[0-9]*.py)) $(sort $(wildcard chapters/A[0-9]*.py))
CHAPTERS := $(CHAPTERS_PY:.py=.ipynb)
OFFLINE := HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1

.PHONY: setup test test-browser book lab sync clean

setup: $(STAMP)

# uv installs the stack in about 2-3 minutes where pip takes over 10; pip is the fallback.
# A .venv without a working pip (python3-venv missing the first time) is rebuilt, not reused.
$(STAMP): requirements.txt pyproject.toml
	@if ! $(PY) -m pip --version >/dev/null 2>&1; then \
		rm -rf $(VENV); \
		if ! $(PYTHON) -m venv $(VENV); then \
			rm -rf $(VENV); \
			echo "error: '$(PYTHON) -m venv $(VENV)' failed, so there is no environment to install into." >&2; \
			echo "On Debian/Ubuntu install the venv module (as root: apt install python3-venv, or the" >&2; \
			echo "python3.X-venv of your version), then run make again." >&2; \
			exit 1; \
		fi; \
	fi
	if $(PY) -m pip install -q uv; then \
		$(VENV)/bin/uv pip install -q --python $(PY) -r requirements.txt && \
		$(VENV)/bin/uv pip install -q --python $(PY) --no-deps -e . ; \
	else \
		$(PY) -m pip install -q -r requirements.txt && $(PY) -m pip install -q --no-deps -e . ; \
	fi
	touch $@

# Unit tests + every chapter under nbval in smoke mode, offline, in this environment.
test: $(STAMP)
	$(OFFLINE) CNETLIB_SMOKE=1 $(PY) -m pytest -p no:cacheprovider tests $(CHAPTERS) \
		--nbval-lax --nbval-current-env --durations=10

# Every chapter with widgets, run in JupyterLab in the system Chromium, each widget moved
# (not part of `make test`; needs Debian's chromium: apt install chromium). Installs the
# playwright package into .venv when missing; never `playwright install`.
test-browser: $(STAMP)
	$(PY) -c "import playwright" 2>/dev/null || $(PY) -m pip install -q playwright
	$(PY) tools/browser_check.py

# Execute every chapter in full mode, in place: outputs in the .ipynb, figures in figures/.
book: $(STAMP) sync
	$(OFFLINE) CNETLIB_SMOKE=0 $(PY) tools/execute_notebooks.py $(CHAPTERS)

# Bring each .ipynb's inputs up to date with its .py source (outputs are kept).
sync: $(STAMP)
	$(VENV)/bin/jupytext --update --to ipynb $(CHAPTERS_PY)

# As root (a container), Jupyter refuses to start without --allow-root.
lab: $(STAMP)
	$(VENV)/bin/jupyter lab chapters $(if $(filter 0,$(shell id -u)),--allow-root)

clean:
	rm -rf $(VENV) .pytest_cache
