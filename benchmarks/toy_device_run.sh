#!/usr/bin/env bash
# The toy world's one-time artifacts, then the whole toy_reproduction benchmark, on one GPU in about 9 minutes.
# Stages that do not depend on each other run as parallel processes on the one device: these models are tiny and
# leave a large GPU mostly idle, so the expert shards and the apprentice variants share it.
#
#   benchmarks/toy_device_run.sh OUT_DIR            # on a GPU machine (python3 with the project's packages)
#   QUICK=1 benchmarks/toy_device_run.sh OUT_DIR    # the same flow at toy sizes, to check it on a CPU
#   FROM=artifacts/toy benchmarks/toy_device_run.sh OUT_DIR   # the benchmark only, from the shipped artifacts
#   FROM=artifacts/toy INIT=artifacts/toy/base BASE_S=120 benchmarks/toy_device_run.sh OUT_DIR
#       # the shipped base trained BASE_S seconds more (then its identity measured), and the benchmark from it
# Phase 4 (evaluation) takes over 2 minutes on a GPU: when the run must fit a fixed time slot, leave it that much.
#
# Writes OUT_DIR/artifacts (base, scorer, readers, report.json), OUT_DIR/results (table, JSON, grid),
# OUT_DIR/work (G shards, expert runs, apprentices; or $WORK) and OUT_DIR/logs. With PACK_TO=DIR, packs the outputs
# into DIR after phases 2, 3 and 4 (toy_device_pack.sh), so a run cut short still brings back what it finished.
set -u
OUT=${1:?usage: toy_device_run.sh OUT_DIR}
A=$OUT/artifacts; W=${WORK:-$OUT/work}; R=$OUT/results; L=$OUT/logs
mkdir -p "$A" "$W" "$R" "$L"
PY=${PYTHON:-python3}
# Up to 10 processes share the machine's cores: torch's default of one CPU thread per core in each of them would
# oversubscribe it, so each process gets 2 (DataLoader workers run with 1).
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 OMP_NUM_THREADS=${OMP_NUM_THREADS:-2} MKL_NUM_THREADS=${MKL_NUM_THREADS:-2}
if [ -n "${QUICK:-}" ]; then
  F=0.05; PRE="--reader-batch 16 --scorer-batch 8 --base-batch 8 --renoise-n 16 --eval-n 16 --reader-finetune-steps 2"; BENCH="--quick"
else
  F=1; PRE=""; BENCH=""
fi
b() { python3 -c "print(max(1, int($1 * $F)))"; }
t0=$(date +%s); stamp() { echo "[toy_device_run] $1 at $(( $(date +%s) - t0 )) s"; }
pack() { [ -n "${PACK_TO:-}" ] && bash "$(dirname "$0")/toy_device_pack.sh" "$OUT" "$W" "$PACK_TO" > "$L/pack.log" 2>&1; true; }
run() { name=$1; shift; "$@" > "$L/$name.log" 2>&1 || echo "[toy_device_run] $name FAILED (exit $?): see $L/$name.log"; }

# FROM=artifacts/toy starts from existing artifacts: apps.toy_pretrain skips every stage already in their report.
if [ -n "${FROM:-}" ]; then cp -r "$FROM"/. "$A"/; fi
stamp "phase 1: readers, scorer, base"
run readers $PY -m apps.toy_pretrain --out "$A" --stage readers --budget-s "$(b 110)" --reader-steps 8000 --workers 3 $PRE &
run scorer $PY -m apps.toy_pretrain --out "$A" --stage scorer --budget-s "$(b 140)" --scorer-steps 8000 $PRE &
run base $PY -m apps.toy_pretrain --out "$A" --stage base --budget-s "$(b "${BASE_S:-165}")" --base-steps 40000 --workers 4 \
  ${INIT:+--init "$INIT" --force} $PRE
wait
stamp "phase 2: reader fine-tune and report; G experts; test-subject experts"
run finish $PY -m apps.toy_pretrain --out "$A" --stage finish --budget-s "$(b 35)" --workers 2 $PRE &
if [ -n "${INIT:-}" ]; then run identity $PY -m apps.toy_pretrain --out "$A" --stage identity --eval-n "$(b 512)" & fi
# Experts run EB at a time as one vmapped model (core.method.expert_batch): one subject per process leaves a GPU
# launch-bound.
EB=${EXPERT_BATCH:-32}
for i in 0 1; do
  run g$i $PY -m benchmarks.toy_reproduction $BENCH --stage g --shard $i --num-shards 2 --expert-batch "$EB" --budget-s "$(b 85)" --artifacts "$A" --work "$W" &
done
run experts0 $PY -m benchmarks.toy_reproduction $BENCH --stage experts --expert-batch "$EB" --budget-s "$(b 85)" --artifacts "$A" --work "$W" &
# Demo branches start with a zero output projection (ZERO_INIT=out), not a zero gate: a zero-gated apprentice had not
# begun to use its demos after 562 steps (docs/toy_study.md).
ZI=${ZERO_INIT:-out}
# ATTENTION=joint puts the demo tokens in each layer's own cross-attention instead (core.method.apprentice; DEMO_GRID: tokens
# per demo side). ENCODER_STEPS warm-starts the demo encoder as an identity recogniser on train subjects first: on the
# CPU that multiplied the apprentice's use of its demos by about 30 (benchmarks/results/demo_use.json, docs/toy_study.md;
# ENCODER_STEPS=0 for none).
ES=${ENCODER_STEPS:-$(b 400)}
APP="--zero-init $ZI --attention ${ATTENTION:-separate} --demo-grid ${DEMO_GRID:-8} --encoder-steps $ES"
# The warm start is made once, here beside the experts, and the apprentice processes of phase 3 load it from $W.
if [ "$ES" != 0 ]; then
  run encoder $PY -m benchmarks.toy_reproduction $BENCH --stage encoder $APP --artifacts "$A" --work "$W" &
fi
wait
pack
stamp "phase 3: apprentices"
for v in suti raw oracle; do
  run train-$v $PY -m benchmarks.toy_reproduction $BENCH --stage train --variant $v $APP --budget-s "$(b 125)" --artifacts "$A" --work "$W" &
done
for v in none 0 0.01 0.02 0.03; do
  run train-sweep-$v $PY -m benchmarks.toy_reproduction $BENCH --stage train --variant sweep-$v $APP --budget-s "$(b 80)" --artifacts "$A" --work "$W" &
done
wait
pack
stamp "phase 4: evaluation"
run eval $PY -m benchmarks.toy_reproduction $BENCH --stage eval --artifacts "$A" --work "$W" --out "$R"
stamp "done"
pack
grep -h "^\[toy_pretrain\]\|^\[toy_reproduction\]" "$L"/*.log | cut -c1-400
