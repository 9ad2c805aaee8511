# make demo: set up .venv (from requirements.lock) and distill a GCN into an MLP on bundled Cora
# make test: set up .venv and run the test suite
PY := .venv/bin/python
export DGLBACKEND := pytorch

.PHONY: venv demo test bench

venv:
	bash scripts/setup_venv.sh

demo: venv
	$(PY) -m dglkd distill configs/cora_gcn_glnn.yaml

test: venv
	$(PY) -m pytest -q tests

bench: venv
	$(PY) benchmarks/bench_arxiv_scale.py
