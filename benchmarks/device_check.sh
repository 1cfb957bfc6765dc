#!/usr/bin/env bash
# GPU check on a machine that has Python, JAX with CUDA and the usual scientific packages but
# no TensorFlow and no network (this workplace's lent GPU machines): Keras runs with the JAX
# backend, the remaining wheels come from .whl/ (keras, namex, optree, urwid, wcwidth).
# Runs the demo (train on the GPU, predict, evaluate) under "precision auto" and again with
# UNETSL_PRECISION=float32 (issue 24: does bfloat16 learn on this GPU, how much faster is it),
# then the prediction benchmark;
# copies logs and results to $OUT. Every step has its own time limit: on 2026-11-26 a second
# run on a warm H200 hung before JAX listed its devices and spent the session's device time.
set -uo pipefail
out="${OUT:-/tmp/device-out}"
mkdir -p "$out"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH="/tmp/site:$PWD/src" KERAS_BACKEND=jax PYTHONUNBUFFERED=1
export XLA_PYTHON_CLIENT_PREALLOCATE=false
bin=/tmp/unetsl-bin
mkdir -p "$bin"
for cmd in create_model attach_data_sources train_model predict_image evaluate_prediction; do
    printf '#!/bin/sh\nexec python3 -m unetsl.cli.%s "$@"\n' "$cmd" > "$bin/$cmd"
    chmod +x "$bin/$cmd"
done
printf '#!/bin/sh\nexec %s "$@"\n' "$(command -v python3)" > "$bin/python"; chmod +x "$bin/python"
export PATH="$bin:$PATH"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$out/gpu.txt"
timeout 120 python3 -c "import jax, keras; print('jax', jax.__version__, jax.devices(), 'keras', keras.__version__)" \
    | tee -a "$out/gpu.txt"
start=$(date +%s)
DEMO_DIR=/tmp/demo DEMO_EPOCHS="${DEMO_EPOCHS:-15}" timeout "${DEMO_TIMEOUT:-240}" \
    bash examples/demo.sh > "$out/demo.log" 2>&1
echo "demo exit $? in $(( $(date +%s) - start )) s" | tee -a "$out/gpu.txt"
tail -n 25 "$out/demo.log"
cp /tmp/demo/evaluation.json "$out/" 2>/dev/null
cp /tmp/demo/training-log_*.txt "$out/" 2>/dev/null
start=$(date +%s)
DEMO_DIR=/tmp/demo-f32 DEMO_EPOCHS="${DEMO_EPOCHS:-15}" UNETSL_PRECISION=float32 \
    timeout "${DEMO_TIMEOUT:-240}" bash examples/demo.sh > "$out/demo-float32.log" 2>&1
echo "float32 demo exit $? in $(( $(date +%s) - start )) s" | tee -a "$out/gpu.txt"
for log in "$out/demo.log" "$out/demo-float32.log"; do  # the choice, the last epoch, the scores
    echo "== $(basename "$log")"
    grep -m1 "precision:" "$log"; grep "^epoch " "$log" | tail -n 1; grep -m2 "^[12] " "$log"
done | tee -a "$out/gpu.txt"
timeout "${BENCH_TIMEOUT:-240}" python3 benchmarks/predict_throughput.py \
    --output "$out/predict_throughput.json" ${BENCH_ARGS:-} 2>&1 | grep -v "^W0000\|^I0000" \
    | tee "$out/bench.log"
