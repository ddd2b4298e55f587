# Two commands work on a fresh machine: `make run` and `make test`.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test model eval eval-external bench bento install serve-deps clean

$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[serve,train,eval,dev,integrations]'
	touch $(STAMP)

install: $(STAMP)

# Start the scoring service with the shipped default model on port 3000.
run: $(STAMP)
	$(BIN)/moat serve --port $${PORT:-3000}

test: $(STAMP)
	$(BIN)/python -m pytest -q

# Regenerate the shipped default bundle from a seeded simulation.
model: $(STAMP)
	$(BIN)/moat generate --out data/default --actors 1600 --days 2 --seed 7 --attack-share 0.35 --no-progress
	$(BIN)/moat train --data data/default --out models/default

# Reproduce the README's results: the simulator's test split with families held out of training
# (runs/eval-report), then the external traces that the simulator did not make (eval-external).
eval: $(STAMP)
	$(BIN)/moat generate --out data/eval --actors 1600 --days 2 --seed 11 --attack-share 0.35 --holdout-families logit_probe,coverage_sweep --no-progress
	$(BIN)/moat train --data data/eval --out runs/eval-model
	$(BIN)/moat evaluate --traces data/eval/test.jsonl --model runs/eval-model --baselines all --out runs/eval-report
	$(MAKE) eval-external

# The shipped bundle on the labelled external dev traces, before and after `moat calibrate` on the
# unlabelled operator sample (labels are read by evaluation only). Learned baselines train on the
# simulator's train split of `make eval`.
EXTERNAL ?= ../shared/data/external
eval-external: $(STAMP)
	@test -d $(EXTERNAL) || { echo "make eval-external: $(EXTERNAL) is missing (the shared folder beside the repository)" >&2; exit 1; }
	@test -f data/eval/train.jsonl || $(BIN)/moat generate --out data/eval --actors 1600 --days 2 --seed 11 --attack-share 0.35 --holdout-families logit_probe,coverage_sweep --no-progress
	rm -rf runs/calibrated
	$(BIN)/moat calibrate --traffic $(EXTERNAL)/calib-spread.jsonl.gz --out runs/calibrated --no-progress
	for t in dev-spread dev-shared-nat; do \
	  $(BIN)/moat evaluate --traces $(EXTERNAL)/$$t.jsonl.gz --train-traces data/eval/train.jsonl --baselines all --out runs/eval-$$t --no-progress || exit 1; \
	  $(BIN)/moat evaluate --traces $(EXTERNAL)/$$t.jsonl.gz --model runs/calibrated --train-traces data/eval/train.jsonl --baselines none --out runs/eval-$$t-calibrated --no-progress || exit 1; \
	done

bench: $(STAMP)
	$(BIN)/python benchmarks/bench_generate.py
	$(BIN)/python benchmarks/bench_scoring.py
	$(BIN)/python benchmarks/bench_state_memory.py --separate
	$(BIN)/python benchmarks/bench_redis.py
	$(BIN)/python benchmarks/bench_http.py

# Build the service's bento into the BentoML store ($BENTOML_HOME, default ~/bentoml): the project
# wheel plus the serve requirements (bentofile.yaml). The wheel is built from a copy of the tracked
# and new files, and bentoml reads a scratch context of bentofile.yaml and dist/ only, so nothing
# lands in the work tree and the bento's src/ holds no source folders.
bento: $(STAMP)
	@set -e; tmp=$$(mktemp -d); trap 'rm -rf "$$tmp"' EXIT; mkdir -p "$$tmp/src" "$$tmp/ctx"; \
	git ls-files -z -co --exclude-standard | tar --null -T - --ignore-failed-read -cf - | tar -xf - -C "$$tmp/src"; \
	$(BIN)/python -m pip wheel -q --no-deps --no-build-isolation -w "$$tmp/ctx/dist" "$$tmp/src"; \
	cp bentofile.yaml "$$tmp/ctx/"; \
	cd "$$tmp/ctx"; BENTOML_DO_NOT_TRACK=True $(abspath $(BIN))/python -m bentoml build .

clean:
	rm -rf $(VENV) runs data
