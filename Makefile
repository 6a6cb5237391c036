# Switchboard: `make run` serves on embedded defaults, `make test` runs the tests.
# Both create .venv and install everything on first use.

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# torch is installed first, as the CPU build. Elsewhere, point pip at the CPU wheels, e.g.
#   make install TORCH_PIP_ARGS="--index-url https://download.pytorch.org/whl/cpu"
TORCH_SPEC ?= torch==2.13.0
TORCH_PIP_ARGS ?=
STAMP := $(VENV)/.installed

.PHONY: install run test lint ask ingest eval fit-abstention bench configure call test-calls

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip

$(STAMP): pyproject.toml | $(PY)
	$(PY) -m pip install --quiet "$(TORCH_SPEC)" $(TORCH_PIP_ARGS)
	$(PY) -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

run: install
	$(PY) -m app

test: install
	$(PY) -m pytest -q

# Documents in KNOWLEDGE_DIR into a new live index build: make ingest [ARGS="--json --strict"]
ingest: install
	$(PY) -m ingest $(ARGS)

lint: install
	$(PY) -m ruff check app ingest tests
	$(PY) -m ruff format --check app ingest tests

ask: install
	$(PY) -m app.testing.ask "$(Q)"

# Benchmarks print their figures; they are never part of `make test`.
bench: install
	$(PY) -m pytest tests/bench -q -s -p no:cacheprovider -o python_files='bench_*.py'

# Point the Speech Engine and TWILIO_PHONE_NUMBER at PUBLIC_URL: make configure [ARGS=--dry-run]
configure: install
	$(PY) -m app.configure $(ARGS)

# A whole phone call on this machine: local stand-ins for Twilio and ElevenLabs and a server wired
# to them; type the caller's side, or make call ARGS='--say "how much is autopay?" --say "bye" [--json]'
call: install
	$(PY) -m app.testing.phone $(ARGS)

# Call scenarios (calls/*.yaml), each a whole call through the same stand-ins as `make call`:
#   make test-calls [ARGS="calls/transfers.yaml --junit report.xml --json -j 4 --asr-noise 0.1 --seed 7"]
test-calls: install
	$(PY) -m app test-calls $(ARGS)

# Retrieval quality on a question set: make eval DOCS=<dir> QUESTIONS="<file.jsonl> ..."
#   [ARGS="--why --ablation --fit --write FILE --min abstain_f1=0.7"]
eval: install
	$(PY) -m app.knowledge.evaluate --docs "$(DOCS)" --questions $(QUESTIONS) $(ARGS)

# The shipped abstention model (app/knowledge/abstention.py), refitted on the data it came from.
SHARED_EVAL ?= ../shared/eval
fit-abstention: install
	$(PY) -m app.knowledge.evaluate --fit \
	  --docs $(SHARED_EVAL)/helpcenter/docs \
	  --questions $(SHARED_EVAL)/helpcenter/questions.jsonl tests/eval/helpcenter_unanswerable.jsonl \
	  --docs $(SHARED_EVAL)/stackfaq/docs \
	  --questions $(SHARED_EVAL)/stackfaq/questions.jsonl tests/eval/stackfaq_unanswerable.jsonl \
	  --docs knowledge --questions tests/eval/knowledge_questions.jsonl $(ARGS)
