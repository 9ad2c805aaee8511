# make demo: set up .venv (from requirements.lock) and distill a GCN into an MLP on bundled Cora
# make test: set up .venv and run the test suite
# make test-nodgl: the no-DGL tests in a venv of their own with torch 2.13 (CPU) and no DGL
PY := .venv/bin/python
export DGLBACKEND := pytorch

.PHONY: venv demo test test-nodgl bench

venv:
	bash scripts/setup_venv.sh

demo: venv
	$(PY) -m dglkd distill configs/cora_gcn_glnn.yaml

test: venv
	$(PY) -m pytest -q tests

test-nodgl:
	bash scripts/test_without_dgl.sh

bench: venv
	$(PY) benchmarks/bench_arxiv_scale.py
