# Two commands for a new user: `make demo` and `make test`. Both run `setup` first.
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.setup-done
export HF_HUB_OFFLINE ?= 1
export TRANSFORMERS_OFFLINE ?= 1
export TOKENIZERS_PARALLELISM ?= false

.PHONY: setup system-deps demo test bench app clean

setup: system-deps $(STAMP)

# Java (pycocoevalcap's METEOR and PTB tokenizer), tesseract (OCR cleaning) and Chromium with its
# driver (the web page's browser test) come from apt.
system-deps:
	@missing=""; \
	command -v java >/dev/null 2>&1 || missing="$$missing default-jre-headless"; \
	command -v tesseract >/dev/null 2>&1 || missing="$$missing tesseract-ocr"; \
	command -v chromium >/dev/null 2>&1 || missing="$$missing chromium"; \
	command -v chromedriver >/dev/null 2>&1 || missing="$$missing chromium-driver"; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    echo "setup: installing$$missing with apt-get"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	  else \
	    echo "setup: please install$$missing (Debian/Ubuntu: sudo apt-get install$$missing), then run make again."; exit 2; \
	  fi; \
	fi

$(STAMP): requirements.txt pyproject.toml
	@command -v $(PYTHON) >/dev/null 2>&1 || { echo "setup: $(PYTHON) not found; install Python 3.11 or run make PYTHON=python3.x"; exit 2; }
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -r requirements.txt
	$(PY) -m pip install -q --no-deps -e .
	@touch $(STAMP)

demo: setup
	$(PY) demo.py

# Two workers (pytest-xdist), one thread each: most tests are single-threaded tiny models or launch a script,
# so two at a time use both cores without the two threads of each torch fighting over them.
test: setup
	OMP_NUM_THREADS=1 $(PY) -m pytest -q -n 2

bench: setup
	$(PY) bench/run.py

# The web page with every model `make demo` trained (http://127.0.0.1:7860; PORT=... to change it).
PORT ?= 7860
app: setup
	GRADIO_ANALYTICS_ENABLED=False $(PY) -m captioning.app --runs demo_runs --port $(PORT)

clean:
	rm -rf demo_runs demo_data .pytest_cache
