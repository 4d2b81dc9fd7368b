"""Trains a model: `python -m xray_jax.train --model=cnn --data_dir=PATH --workdir=runs/cnn`.

Running the same command again after a kill resumes from the last checkpoint.
"""

from __future__ import annotations

from xray_jax import hostmem

hostmem.keep_freed_memory()  # before jax and TensorFlow start their threads (see hostmem)

# pylint: disable=wrong-import-position
import dataclasses

from absl import flags

from xray_jax import augment
from xray_jax import cli
from xray_jax import evaluate
from xray_jax import learning
from xray_jax import parallel
from xray_jax import trainer

_D = learning.TrainConfig()
FLAGS = flags.FLAGS
flags.DEFINE_string("model", _D.model, "Model name: a file in xray_jax/models/ (cnn, mlp, refcnn, ...).")
flags.DEFINE_string("data_dir", None, "Folder of the Kaggle download holding train/ (and val/, test/). "
                    "Prepared once into --tfds_data_dir; without it, the prepared data is used.")
flags.DEFINE_string("tfds_data_dir", None, "Where prepared TFDS data lives (default $TFDS_DATA_DIR or "
                    "~/tensorflow_datasets).")
flags.DEFINE_string("workdir", "runs/default", "Run folder: checkpoints, metrics.jsonl, TensorBoard, reports.")
flags.DEFINE_bool("overwrite", False, "Delete an existing run in --workdir instead of resuming it.")
flags.DEFINE_integer("image_size", _D.image_size, "Images are resized to image_size x image_size.")
flags.DEFINE_integer("batch_size", _D.batch_size, "Training batch size.")
flags.DEFINE_integer("eval_batch_size", _D.eval_batch_size, "Evaluation batch size.")
flags.DEFINE_integer("num_epochs", _D.num_epochs, "Epochs over the train split.")
flags.DEFINE_integer("num_steps", _D.num_steps, "If > 0, train this many steps instead of --num_epochs.")
flags.DEFINE_float("learning_rate", _D.learning_rate, "Peak learning rate (AdamW, warm-up then cosine decay).")
flags.DEFINE_float("warmup_epochs", _D.warmup_epochs, "Epochs of linear learning-rate warm-up.")
flags.DEFINE_float("weight_decay", _D.weight_decay, "AdamW decoupled weight decay.")
flags.DEFINE_float("label_smoothing", _D.label_smoothing, "Label smoothing of the cross-entropy targets.",
                   lower_bound=0.0, upper_bound=0.5)
flags.DEFINE_float("mixup_alpha", _D.mixup_alpha, "Mixup: blend each training image with another of its batch, "
                   "weight ~ Beta(alpha, alpha), and the losses of both labels the same way (0: off).",
                   lower_bound=0.0)
flags.DEFINE_float("ema_decay", _D.ema_decay, "Evaluate, checkpoint-select and predict with an exponential "
                   "moving average of the weights and BatchNorm statistics, this decay per step (0: off; "
                   "0.998 averages about the last 500 steps).", lower_bound=0.0, upper_bound=0.9999)
flags.DEFINE_bool("augment", _D.augment, "On-device random affine and intensity augmentation in training.")
flags.DEFINE_string("size_schedule", _D.size_schedule, "Progressive resizing: train the first epochs at lower "
                    "resolutions, SIZE:EPOCHS pairs from the start, e.g. 64:2,96:3 (2 epochs at 64 px, 3 at 96, the "
                    "rest at --image_size). Each batch is augmented at --image_size, then downscaled; evaluation "
                    "always runs at --image_size. Empty: every epoch at --image_size.")
flags.DEFINE_float("aug_rotate_deg", _D.augment_config.rotate_deg, "Max rotation, degrees.")
flags.DEFINE_float("aug_scale", _D.augment_config.scale, "Max zoom change (fraction).")
flags.DEFINE_float("aug_shift", _D.augment_config.shift, "Max shift (fraction of the image size).")
flags.DEFINE_float("aug_brightness", _D.augment_config.brightness, "Max brightness change.")
flags.DEFINE_float("aug_contrast", _D.augment_config.contrast, "Max contrast change (fraction).")
flags.DEFINE_float("aug_gamma", _D.augment_config.gamma, "Gamma exponent range is [1/(1+g), 1+g].")
flags.DEFINE_float("aug_blur", _D.augment_config.blur, "Max Gaussian blur sigma, pixels (0: none; at most 2).")
flags.DEFINE_float("aug_noise", _D.augment_config.noise, "Max Gaussian noise std on [0, 1] images (0: none).")
flags.DEFINE_float("aug_border", _D.augment_config.border, "Probability of flat collimator bands of a random "
                   f"level at the image edges, each up to {augment.BORDER_MAX:.0%} of the size (0: none).",
                   lower_bound=0.0, upper_bound=1.0)
flags.DEFINE_float("aug_erase", _D.augment_config.erase, "Probability of random erasing: one rectangle of "
                   f"uniform noise, {augment.ERASE_AREA[0]:.0%}-{augment.ERASE_AREA[1]:.0%} of the image, "
                   "anywhere in it (0: none).", lower_bound=0.0, upper_bound=1.0)
flags.DEFINE_enum("dtype", _D.dtype, ["float32", "bfloat16"], "Compute dtype of the model's layers; "
                  "parameters, optimizer and loss stay float32. bfloat16 pays off on GPUs and TPUs, not on CPUs.")
flags.DEFINE_enum("threshold_rule", _D.threshold_rule, list(trainer.THRESHOLD_RULES),
                  "The reports' chosen threshold: Youden's J on validation, or on validation pooled with its "
                  "stress shifts (xray_jax/stress.py). Stored in config.json as evaluate's default.")
flags.DEFINE_integer("seed", _D.seed, "Seed of initialisation, data order, augmentation and dropout.")
flags.DEFINE_integer("log_every_steps", _D.log_every_steps, "Console progress every N steps.")
flags.DEFINE_integer("checkpoint_every_steps", _D.checkpoint_every_steps,
                     "Checkpoint every N steps as well as at each epoch end.")
flags.DEFINE_string("coordinator_address", None, "Multi-process runs: host:port of process 0's coordinator. "
                    "On TPU pods, SLURM or Open MPI, --distributed alone lets JAX find it.")
flags.DEFINE_integer("num_processes", None, "Multi-process runs: how many processes in all.")
flags.DEFINE_integer("process_id", None, "Multi-process runs: this process's index, 0..num_processes-1.")
flags.DEFINE_bool("distributed", False, "Call jax.distributed.initialize() with what the cluster environment says.")
flags.DEFINE_enum("best_metric", _D.best_metric, list(trainer.BEST_METRICS),
                  "Validation metric that picks the checkpoint evaluation uses (WD/best/); final: no "
                  "pick, the last one validated.")


def config_from_flags() -> learning.TrainConfig:
  names = {f.name for f in dataclasses.fields(learning.TrainConfig)} - {"augment_config", "num_classes"}
  aug = augment.AugmentConfig(
      rotate_deg=FLAGS.aug_rotate_deg, scale=FLAGS.aug_scale, shift=FLAGS.aug_shift,
      brightness=FLAGS.aug_brightness, contrast=FLAGS.aug_contrast, gamma=FLAGS.aug_gamma,
      blur=FLAGS.aug_blur, noise=FLAGS.aug_noise, border=FLAGS.aug_border,
      erase=FLAGS.aug_erase)
  return learning.TrainConfig(augment_config=aug, **{n: FLAGS[n].value for n in names})


def main(argv: list[str]) -> None:
  parallel.initialize_distributed(auto=FLAGS.distributed, coordinator_address=FLAGS.coordinator_address,
                                  num_processes=FLAGS.num_processes, process_id=FLAGS.process_id)
  best = trainer.train_and_evaluate(config_from_flags(), FLAGS.workdir, overwrite=FLAGS.overwrite)
  # The report of the best checkpoint; every process takes part in the restore, one writes.
  evaluate.evaluate_workdir(FLAGS.workdir, split="validation")
  parallel.sync("reports written")  # leave together: JAX's shutdown barrier waits for all
  if not parallel.is_primary():
    return
  which = "Final" if FLAGS.best_metric == "final" else "Best validation"
  print(f"{which} checkpoint: step {best.get('step')}, ROC AUC {best.get('roc_auc', float('nan')):.4f}, "
        f"accuracy {best.get('accuracy', float('nan')):.4f}. Reports: {FLAGS.workdir}/reports/")


if __name__ == "__main__":
  cli.run(main)
