#!/usr/bin/env bash
# Trains one experiment with several seeds, one workdir each (runs/<name>_s<seed>), and
# evaluates each on the stress-validation set (its standard and its unseen shifts) and on
# Kaggle's val/ split, for the mean and
# spread that experiments/RESULTS.md reports (scripts/summarize_runs.py makes the table).
# A complete run is resumed, which returns at once, so the script can be rerun after an
# interruption.
#   bash scripts/run_seeds.sh cnn ../shared/data/chest_xray 0 1 2
# Extra train flags go in EXTRA_FLAGS, e.g. EXTRA_FLAGS="--tfds_data_dir=runs/tfds_shared"; RUNS_DIR
# (default runs) is where the workdirs go, e.g. to train a recipe again beside its old runs.
set -euo pipefail
source "$(dirname "$0")/_venv.sh"
name=$1; data_dir=$2; shift 2
for seed in "$@"; do
  wd=${RUNS_DIR:-runs}/${name}_s${seed}
  echo "== $name seed $seed -> $wd ($(date -u +%H:%M:%S))"
  # A resumed (or already finished) run times only its tail: that goes in another file, so
  # that summarize_runs.py never averages it in as a training time.
  wall_file=wall_time_s.txt
  if [ -n "$(ls -A "$wd/checkpoints" 2>/dev/null)" ]; then wall_file=wall_time_resumed_s.txt; fi
  start=$(date +%s)
  # shellcheck disable=SC2086
  .venv/bin/python -m xray_jax.train --flagfile="experiments/$name.flags" --data_dir="$data_dir" \
    --workdir="$wd" --seed="$seed" ${EXTRA_FLAGS:-}
  echo "$(( $(date +%s) - start ))" > "$wd/$wall_file"
  echo "== $name seed $seed trained in $(cat "$wd/$wall_file") s ($wall_file)"
  .venv/bin/python -m xray_jax.evaluate --workdir="$wd" --split=validation --stress --label_shift=em \
    --report_name=validation_stress --mistake_maps=0
  .venv/bin/python -m xray_jax.evaluate --workdir="$wd" --split=validation --stress --stress_set=unseen \
    --label_shift=em --report_name=validation_unseen --mistake_maps=0
  .venv/bin/python -m xray_jax.evaluate --workdir="$wd" --split=kaggle_val --mistake_maps=0
done
