#!/usr/bin/env bash
# The GPU figures of benchmarks/RESULTS.md: images/s and model-FLOP utilisation (MFU) of `cnn`
# and `refcnn`, float32 and bfloat16, one JSON line per model and setting.
#
#   bash scripts/benchmark_gpu.sh [PYTHON]      # default python3; needs JAX with CUDA, no TensorFlow
#
# MFU divides XLA's own count of the step's FLOPs by a datasheet peak; the defaults are an H100
# SXM's dense rates (override PEAK_TF32, PEAK_BF16 for another card). float32 is compared with
# TF32 because that is what XLA runs float32 convolutions and matmuls at on NVIDIA GPUs since
# Ampere at its default precision; each line also gives the fraction of a matmul measured in the
# same process, in the same dtype.
set -euo pipefail
PY=${1:-python3}
PEAK_TF32=${PEAK_TF32:-494.7}
PEAK_BF16=${PEAK_BF16:-989.4}
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
BATCHES=${BATCHES:-256}  # e.g. BATCHES="256 1024"
bench() { echo "# $(date +%T) $*"; timeout 200 "$PY" scripts/benchmark.py --matmul_size=8192 --steps=50 --json "$@" || echo "# failed: $*"; }

"$PY" -c 'import jax; print("#", jax.__version__, jax.devices())'
for batch in $BATCHES; do
  bench --model=refcnn --model=cnn --batch=$batch --dtype=float32 --peak_tflops=$PEAK_TF32
  bench --model=refcnn --model=cnn --batch=$batch --dtype=bfloat16 --peak_tflops=$PEAK_BF16
done
# What xray_jax/hostmem.py's single malloc arena (off where a GPU is visible) would cost here.
XRAY_JAX_MALLOC=keep_freed bench --model=refcnn --batch=256 --dtype=float32 --peak_tflops=$PEAK_TF32
# `cnn` at its recipe's batch (experiments/cnn.flags: 32) with on-device augmentation (the default
# AugmentConfig; the recipe adds blur and noise).
bench --model=cnn --batch=32 --augment --dtype=float32 --peak_tflops=$PEAK_TF32
