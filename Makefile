# Two entry points: `make demo` and `make test`. Each installs into .venv first, only when
# pyproject.toml changed since the last install (the stamp file carries its hash).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(shell sha1sum pyproject.toml | cut -c1-16)
export HF_HUB_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: install demo sort-of-clevr test test-slow clean

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e ".[dev]"
	rm -f $(VENV)/.installed-*
	touch $@

# the staged demo pipeline (data -> clip -> lm -> LLaVA -> Flamingo -> LoRA -> eval -> report);
# rerunning skips finished stages and resumes an interrupted one
demo: $(STAMP)
	WANDB_MODE=offline $(BIN)/chimera pipeline run configs/pipelines/demo.yaml

# the Sort-of-CLEVR benchmark (issue 2's tiny LLaVA from scratch; about 35 minutes)
sort-of-clevr: $(STAMP)
	$(BIN)/chimera data sort-of-clevr --out runs/data/sort-of-clevr --train-images 9800 --val-images 200 --seed 0 --captions
	$(BIN)/chimera fit --config configs/experiments/llava_sort_of_clevr_tiny.yaml

test: $(STAMP)
	WANDB_MODE=offline $(BIN)/python -m pytest -q

test-slow: $(STAMP)
	WANDB_MODE=offline $(BIN)/python -m pytest -q -m slow

clean:
	rm -rf runs
