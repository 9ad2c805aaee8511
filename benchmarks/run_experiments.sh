#!/usr/bin/env bash
# Reproduce every accuracy table in the README (CPU; about three hours on 2 cores).
#   bash benchmarks/run_experiments.sh [OUT_DIR]     (default: runs/experiments)
# Graph experiments and MNIST run as two single-threaded chains side by side.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-runs/experiments}
PY=${PY:-.venv/bin/python}
export DGLBACKEND=pytorch OMP_NUM_THREADS=1
mkdir -p "$OUT"
graphs() {
    $PY -m dglkd distill configs/cora_gcn_glnn.yaml --out "$OUT/cora"
    $PY -m dglkd compare configs/cora_gat_lsp.yaml --out "$OUT/cora" \
        --methods ce,kd,lsp,lsp_kd,hkd,fitnet,rkd
    $PY -m dglkd compare configs/cora_glnn_hkd.yaml --out "$OUT/cora" --methods glnn,glnn_hkd
    $PY -m dglkd compare configs/cora_glnn_hkd.yaml --out "$OUT/cora" --methods kd,kd_hkd \
        --set student.model=gcn --set student.hidden=8 --set name=cora_gcn8_kd_hkd
    $PY -m dglkd compare configs/cora_gat_lsp.yaml --out "$OUT/citeseer" \
        --methods ce,kd,lsp,lsp_kd,hkd,fitnet,rkd --set data.name=citeseer --set name=citeseer_gat_lsp
    $PY -m dglkd distill configs/npz_sage_glnn.yaml --out "$OUT/npz"
    # GNN -> MLP on GLNN's protocol: NOSMOG, then dglkd's best recipe, both settings
    for setting in false true; do
        $PY -m dglkd compare configs/npz_sage_nosmog.yaml --out "$OUT/npz" \
            --methods ce,glnn,nosmog --set data.inductive=$setting
        $PY -m dglkd compare configs/npz_sage_mlp_best.yaml --out "$OUT/npz" \
            --methods ce,glnn --set data.inductive=$setting
    done
    # the same on 20 splits no variant was chosen on (seeds 10-29), recipe + mixup too
    for first in 10 20; do
        for setting in false true; do
            $PY -m dglkd compare configs/npz_sage_nosmog.yaml --out "$OUT/npz" \
                --methods glnn,nosmog --set seed=$first --set data.inductive=$setting
            $PY -m dglkd compare configs/npz_sage_mlp_best.yaml --out "$OUT/npz" \
                --methods glnn --set seed=$first --set data.inductive=$setting
        done
        $PY -m dglkd compare configs/npz_sage_mlp_best.yaml --out "$OUT/npz" --methods glnn \
            --set seed=$first --set "compare.glnn.terms.mixup={alpha: 0.2}"
    done
    # GNN -> GNN: a SAGE student of the refined SAGE teacher, seeds 0-9 and 10-29
    for first in 0 10 20; do
        $PY -m dglkd compare configs/npz_sage_sage_refined.yaml --out "$OUT/npz" --methods glnn \
            --set seed=$first
    done
    # the demo's teacher refined by Correct and Smooth, and by smoothing alone
    $PY -m dglkd distill configs/cora_gcn_glnn.yaml --out "$OUT/cora" --set baseline=false \
        --set "teacher_refine={}" --set name=cora_gcn_cs_glnn
    $PY -m dglkd distill configs/cora_gcn_glnn.yaml --out "$OUT/cora" --set baseline=false \
        --set "teacher_refine={correct_alpha: 0.0, smooth_alpha: 0.9}" --set name=cora_gcn_smooth_glnn
    # the same refinements with mixup on top (Cora: C&S; Citeseer: smoothing only)
    $PY -m dglkd distill configs/cora_gcn_glnn.yaml --out "$OUT/cora" --set baseline=false \
        --set "teacher_refine={}" --set "method={terms: {glnn: 1.0, mixup: {alpha: 0.2}}}" \
        --set name=cora_gcn_cs_glnn_mixup
    $PY -m dglkd distill configs/cora_gcn_glnn.yaml --out "$OUT/citeseer" --set baseline=false \
        --set data.name=citeseer --set "teacher_refine={correct_alpha: 0.0, smooth_alpha: 0.9}" \
        --set "method={terms: {glnn: 1.0, mixup: {alpha: 0.2}}}" --set name=citeseer_gcn_smooth_glnn_mixup
}
images() {
    $PY -m dglkd compare configs/mnist_compare.yaml --out "$OUT/mnist" \
        --methods ce,kd,hkd,hkd_kd,mhgd,lsp,crd,rkd
}
graphs > "$OUT/graphs.log" 2>&1 &
images > "$OUT/images.log" 2>&1 &
wait
grep -h -A14 "^| \(role\|method\) " "$OUT"/*.log
