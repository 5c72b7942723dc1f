#!/usr/bin/env bash
# Base pretraining only, two configurations side by side on one GPU (the tiny model leaves it mostly idle), each
# then measured on its own test-subject captions with the shipped readers; both come back packed in 15 MiB pieces.
#   benchmarks/toy_base_device.sh OUT_DIR [BUDGET_S]
# Each configuration is "name preset batch lr workers" (CONFIGS); INIT=DIR continues from a saved base. The one
# with the higher identity is the one to ship.
set -u
OUT=${1:?usage: toy_base_device.sh OUT_DIR [BUDGET_S]}; BUDGET=${2:-330}
PY=${PYTHON:-python3}
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 OMP_NUM_THREADS=${OMP_NUM_THREADS:-2} MKL_NUM_THREADS=${MKL_NUM_THREADS:-2}
CONFIGS=${CONFIGS:-"b1024 toy-wide 1024 2e-3 7;b2048 toy-wide 2048 3e-3 7"}
mkdir -p "$OUT/logs"
t0=$(date +%s)
IFS=';' read -ra ROWS <<< "$CONFIGS"
for row in "${ROWS[@]}"; do
  read -r name preset batch lr workers <<< "$row"
  mkdir -p "$OUT/$name" && cp -r artifacts/toy/readers "$OUT/$name/"
  ( $PY -m apps.toy_pretrain --out "$OUT/$name" --stage base --preset "$preset" --budget-s "$BUDGET" --base-steps 6000 \
      --base-batch "$batch" --base-lr "$lr" --workers "$workers" ${INIT:+--init "$INIT"} \
    && $PY -m apps.toy_pretrain --out "$OUT/$name" --stage identity --eval-n 512 ) > "$OUT/logs/$name.log" 2>&1 &
done
wait
echo "[toy_base_device] done at $(( $(date +%s) - t0 )) s"
for row in "${ROWS[@]}"; do
  read -r name _ <<< "$row"
  rm -rf "$OUT/$name/readers"
  tar czf - -C "$OUT" "$name" | split -b 15m - "$OUT/$name.tgz."
  grep -h "^\[toy_pretrain\]" "$OUT/logs/$name.log" | cut -c1-700
done
tar czf "$OUT/logs.tgz" -C "$OUT" logs
