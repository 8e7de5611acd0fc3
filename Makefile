# Two commands: `make demo` (set up, pretrain on the embedded demo data, evaluate) and `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python

.PHONY: demo demo-seeds test lint format setup transfer-demo transfer-demo-seeds

# The stamps re-run pip only when a requirements file changed.
$(VENV)/.core-installed: requirements.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements.txt
	touch $@

$(VENV)/.dev-installed: $(VENV)/.core-installed requirements-dev.txt requirements-transfer.txt
	$(PY) -m pip install -q -r requirements-dev.txt -r requirements-transfer.txt
	touch $@

setup: $(VENV)/.core-installed

demo: $(VENV)/.core-installed
	PYTHON=$(PY) bash scripts/demo.sh

# The demo for seeds 0, 1 and 2 (three trainings; seed 0 is `make demo`'s, reused when done), ending with
# every column's mean and min-max over the seeds.
demo-seeds: $(VENV)/.core-installed
	DEMO_SEEDS="0 1 2" PYTHON=$(PY) bash scripts/demo.sh

# detectron2 is not on PyPI: `make test D2_SOURCE=FOLDER|TARBALL|GIT_URL` installs it first with
# transfer/detection/install_detectron2.sh (.ci/run passes ../shared/vendor/'s tarball when there is one);
# without it the detectron2 tests skip. The stamp is per source, so another source reinstalls.
D2_SOURCE ?=
D2_STAMP := $(VENV)/.detectron2-from-$(subst :,_,$(notdir $(D2_SOURCE)))

$(D2_STAMP): $(wildcard $(D2_SOURCE)) transfer/detection/install_detectron2.sh \
		transfer/detection/requirements-detectron2.txt | $(VENV)/.dev-installed
	PYTHON=$(PY) bash transfer/detection/install_detectron2.sh $(D2_SOURCE)
	touch $@

test: $(VENV)/.dev-installed $(if $(D2_SOURCE),$(D2_STAMP))
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .
	$(PY) -m pytest -q

# The paper's Table 1 in miniature: fine-tune Mask R-CNN and FCN on the demo scenes from the demo checkpoint
# and from random weights, beside the colour-only rows (transfer/README.md). TRANSFER_ARGS: more options of
# transfer/demo_table.py.
transfer-demo: $(VENV)/.dev-installed
	PYTHONWARNINGS=ignore $(PY) -m transfer.demo_table $(TRANSFER_ARGS)

# The same for make demo-seeds' three checkpoints (seeds 0, 1, 2), on all 1000 labelled scenes and on 20% and 5% of
# them (same schedule): 36 fine-tunings, hours on a CPU (transfer/README.md); finished runs are reused.
transfer-demo-seeds: $(VENV)/.dev-installed
	PYTHONWARNINGS=ignore $(PY) -m transfer.demo_table --checkpoint output/demo/current.pth \
		output/demo-seed1/current.pth output/demo-seed2/current.pth --seed 0 1 2 --label-fractions 1 0.2 0.05 \
		$(TRANSFER_ARGS)

# ruff's linter and formatter (line length 120, pyproject.toml); `make test` (and so CI) checks both first.
lint: $(VENV)/.dev-installed
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .

format: $(VENV)/.dev-installed
	$(PY) -m ruff format .
