#!/usr/bin/env bash
# Does memseg augmentation help a classifier on Magnetic-tile? Zero-shot, full-shot, full-shot +
# memseg; one seed, CPU-sized. From the repository root: bash benchmarks/mt_memseg/run.sh
set -euo pipefail
here=benchmarks/mt_memseg
diag=.venv/bin/diag
real=(--set data.real_positives=all)
real_only=("${real[@]}" --set 'data.generated=[]' --set data.naug=null)
$diag generate $here/spec.yaml --out out/mt_memseg
$diag train $here/train.yaml --out out/mt_zero
$diag train $here/train.yaml --out out/mt_full "${real_only[@]}"
$diag train $here/train.yaml --out out/mt_fullaug "${real[@]}"
$diag train $here/train.yaml --out out/mt_fullaug_mixedval "${real[@]}" \
    --set data.val_generated=true
for r in zero full fullaug fullaug_mixedval; do
  .venv/bin/python -c "import json,sys; m=json.load(open(sys.argv[1]))['test']; \
t=m['at_threshold']; print(sys.argv[2], {k: round(m[k], 3) for k in ('ap', 'auroc')}, \
{k: round(t[k], 3) for k in ('precision', 'recall')})" out/mt_$r/metrics.json $r
done
# Spread over training seeds (same data, validation split and Naug choice): SEEDS=0,1,2
if [ -n "${SEEDS:-}" ]; then
  $diag train $here/train.yaml --out out/mt_full_seeds --seeds "$SEEDS" "${real_only[@]}"
  $diag train $here/train.yaml --out out/mt_fullaug_seeds --seeds "$SEEDS" "${real[@]}"
fi
