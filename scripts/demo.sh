#!/usr/bin/env bash
# Trains the CNN on the sample images that ship with the repo, evaluates it, and says where
# the reports are. A few minutes on 2 CPU cores. The sample is tiny: its figures show that the
# code works, not how good the model is.
source "$(dirname "$0")/_venv.sh"
WD=runs/demo
set -x
.venv/bin/python -m xray_jax.train --model=cnn --data_dir=sample_data/chest_xray \
  --tfds_data_dir=runs/tfds_sample --workdir=$WD --overwrite --num_epochs=12 --batch_size=32 \
  --log_every_steps=10
.venv/bin/python -m xray_jax.evaluate --workdir=$WD --split=test
.venv/bin/python -m xray_jax.evaluate --workdir=$WD --image_dir=sample_data/chest_xray/val
set +x
echo
echo "Reports: $WD/reports/ (validation.md, test.md, image_dir_val.md, with .json and _predictions.csv)"
echo "Curves:  .venv/bin/tensorboard --logdir=$WD/tensorboard   or   $WD/metrics.jsonl"
