"""Times training, inference and the input pipeline, beside a matmul ceiling measured in the same run.

    python scripts/benchmark.py --model=refcnn --batch=64
    python scripts/benchmark.py --model=refcnn --batch=64 --compare      # + Keras and PyTorch twins
    python scripts/benchmark.py --model=cnn --data_dir=sample_data/chest_xray --json
    python scripts/benchmark.py --model=cnn --data_dir=../shared/data/chest_xray --batch=32 --turnover_epochs=3 --json
    python scripts/benchmark.py --recipe=experiments/cnn.flags --recipe=experiments/cnn_erase.flags --rounds=5 --json

Absolute times on a shared machine drift; compare ratios taken in one run (each row names its host
CPU in `cpu`, as a training run's environment.jsonl does). The train step
is timed as the trainer runs it (jitted, state donated, uint8 batch, on-device
augmentation only with --augment, or a recipe's own with --recipe), median over --steps after warm-up, synchronised with
block_until_ready; FLOPs come from XLA's own cost analysis of the step before optimisation.
On CPU the train step is compiled as the trainer compiles it (xray_jax/compile_options.py);
`XRAY_JAX_CPU_CONV=ynnpack` times it with jaxlib's default convolutions instead.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
import dataclasses
import functools
import gc
import importlib.util
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from xray_jax import hostmem  # pylint: disable=g-import-not-at-top

# As the entry points do, before jax starts its threads; XRAY_JAX_MALLOC=default measures without.
MALLOC = "keep_freed" if hostmem.keep_freed_memory() else "default"

import flax.linen as nn  # pylint: disable=g-import-not-at-top
import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image

from xray_jax import compile_options
from xray_jax import environment
from xray_jax import layers
from xray_jax import learning
from xray_jax import profiling

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _timed(fn, repeats: int) -> tuple[float, float]:
  """Median seconds per call, and the page faults per call: fresh host memory, not reused (see hostmem)."""
  times = []
  faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
  for _ in range(repeats):
    t = time.perf_counter()
    jax.block_until_ready(fn())
    times.append(time.perf_counter() - t)
  return statistics.median(times), (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults) / repeats


def matmul_ceiling(n: int = 2048, dtype: str = "float32", repeats: int = 10) -> float:
  """GFLOP/s of an n x n matmul in `dtype` through XLA on the default device (random data, never zeros)."""
  a = jax.random.normal(jax.random.key(0), (n, n), jnp.float32).astype(dtype)
  f = jax.jit(lambda a: a @ a)
  f(a).block_until_ready()
  return 2 * n**3 / _timed(lambda: f(a), repeats)[0] / 1e9


def _flops(lowered) -> float | None:
  """XLA's FLOP count of the program before optimisation: the model's FLOPs, the same on every backend.

  The compiled program's count is not: on GPU it leaves out the convolutions that become
  cuDNN calls (0.03 of refcnn's 1.36 GFLOP per image on an H100, benchmarks/RESULTS.md).
  """
  cost = lowered.cost_analysis()
  if isinstance(cost, list):
    cost = cost[0] if cost else {}
  return float(cost.get("flops", 0.0)) or None if cost else None


def _model_flops(fn, *args) -> float | None:
  """FLOPs of jitted `fn` on `args`, counted on the CPU where this backend gives no count.

  (GPU plugins do not analyse a program before compiling it; the program is the same.)
  """
  flops = _flops(fn.lower(*args))
  if flops is None and jax.default_backend() != "cpu":
    cpu = jax.devices("cpu")[0]
    flops = _flops(fn.lower(*jax.device_put(args, cpu)))
  return flops


def conv_kinds(model: nn.Module, image_size: int) -> str:
  """Which convolutions the model really builds: nn.Conv, layers.Conv (faster gradient passes), both."""
  kinds = set()

  def record(next_fun, args, kwargs, context):
    if isinstance(context.module, nn.Conv) and context.method_name == "__call__":
      fast = context.module.conv_general_dilated is layers.conv_general_dilated
      kinds.add("layers.Conv" if fast else "nn.Conv")
    return next_fun(*args, **kwargs)

  with nn.intercept_methods(record):
    jax.eval_shape(functools.partial(model.init, train=False), jax.random.key(0),
                   jnp.zeros((1, image_size, image_size, 1)))
  return "+".join(sorted(kinds)) or "none"


ONE_CHANNEL_TAPS = "xla; one-channel inputs: taps forward, matmul"


def conv_kernel_grad(kinds: str) -> str:
  """How the train step's convolutions depart from lax (layers.conv_general_dilated says why):
  with layers.Conv on CPU, kernel gradients as matmuls where YNNPACK convolves, else only
  one-channel inputs (the first layer) by taps forward and one matmul for the kernel gradient.
  """
  if kinds == "none":
    return "none"
  if "layers.Conv" not in kinds or jax.default_backend() != "cpu":
    return "xla"
  return "matmuls" if compile_options.ynnpack_convolutions() else ONE_CHANNEL_TAPS


def recipe_config(path: str) -> learning.TrainConfig:
  """The TrainConfig that `python -m xray_jax.train --flagfile=path` trains with: its model, batch,
  image size, dtype, augmentation (blur, noise, bands, erasing included) and step options."""
  if not os.path.isfile(path):
    raise SystemExit(f"--recipe={path}: no such flag file (the recipes are experiments/*.flags)")
  from absl import flags  # pylint: disable=g-import-not-at-top
  from xray_jax import train  # defines the trainer's flags; needs TensorFlow, as training does
  flags.FLAGS.unparse_flags()  # each recipe from the defaults, not from the one before it
  flags.FLAGS(["benchmark", f"--flagfile={path}"])
  return train.config_from_flags()


def _jitted_step(config: learning.TrainConfig, train_size: int | None = None):
  """The train step as the trainer jits it (its class weights: the shared data's)."""
  return compile_options.jit(learning.train_step_for(config, jnp.array([1.94, 0.67]), train_size), donate_argnums=0)


def _warm_caller(step, holder: dict, device_batch: dict, key: jax.Array) -> Callable[[], jax.Array]:
  """One call of compiled `step` on holder["state"] (donated, then replaced), after three warm-up calls."""
  def one_step():
    holder["state"], m = step(holder["state"], device_batch, key)
    return m["loss"]

  for _ in range(3):
    one_step()
  return one_step


def schedule_rates(config: learning.TrainConfig, holder: dict, device_batch: dict, key: jax.Array, steps: int,
                   full_rate: float) -> dict:
  """With a --size_schedule: the step's images/s at each of its sizes (the same batch, downscaled in the
  step as in training) and the run's mean rate, its images over the schedule's summed step time."""
  schedule = learning.size_schedule(config)
  if not schedule:
    return {}
  rates = {config.image_size: full_rate}
  for size, _ in schedule:
    step = _jitted_step(config, size).lower(holder["state"], device_batch, key).compile()
    rates[size] = config.batch_size / _timed(_warm_caller(step, holder, device_batch, key), steps)[0]
  epochs = [*schedule, (config.image_size, config.num_epochs - sum(e for _, e in schedule))]
  return {"size_schedule": config.size_schedule,
          "train_img_per_s_by_size": {str(s): round(r, 1) for s, r in sorted(rates.items())},
          "train_img_per_s_schedule": round(config.num_epochs / sum(e / rates[s] for s, e in epochs), 1)}


def bench_model(config: learning.TrainConfig, *, steps: int, recipe: str | None = None,
                profile_dir: str | None = None,
                profile_steps: int = 5) -> tuple[dict, Callable[[], jax.Array], Callable[[], jax.Array]]:
  """The row of figures for `config`'s train step (as the trainer builds it, augmentation only with
  config.augment), and the compiled step (on a fixed batch) and inference call (batch 256) for other
  timings to run. With `profile_dir`, also traces `profile_steps` train steps after the timed ones and
  writes their per-op table to profile_dir/<recipe or model>_train_ops.md (xray_jax/profiling.py)."""
  name, batch, image_size, augment = config.model, config.batch_size, config.image_size, config.augment
  label = recipe or name
  model = learning.create_model(config)
  state = learning.create_train_state(config, model, jax.random.key(0), lambda _: 1e-3)
  rng = np.random.default_rng(0)
  batch_np = {"image": rng.integers(0, 256, (batch, image_size, image_size, 1), dtype=np.uint8),
              "label": rng.integers(0, 2, batch).astype(np.int32)}
  device_batch = jax.device_put(batch_np)
  kinds = conv_kinds(model, image_size)
  step = _jitted_step(config)
  key = jax.random.key(1)
  train_flops = _model_flops(step, state, device_batch, key)
  t = time.perf_counter()
  step = step.lower(state, device_batch, key).compile()  # timed once here, then called: no second compilation
  compile_s = time.perf_counter() - t
  holder = {"state": state}
  one_step = _warm_caller(step, holder, device_batch, key)
  train_s, faults_per_step = _timed(one_step, steps)
  scheduled = schedule_rates(config, holder, device_batch, key, steps, batch / train_s)
  profiled = {}
  if profile_dir:
    try:
      ops, wall_s = profiling.profile(one_step, profile_steps, os.path.join(profile_dir, f"{label}_trace"),
                                      step.as_text())
      table = os.path.join(profile_dir, f"{label}_train_ops.md")
      profiling.write_table(ops, profile_steps, wall_s, table)
      profiled = {"profile_table": table, **{f"profile_{k}": v for k, v in
                                             profiling.summary(ops, profile_steps, wall_s).items()}}
    except RuntimeError as e:  # a backend whose trace names its ops otherwise: the timings still stand
      profiled = {"profile_error": str(e)}

  infer_batch = jax.device_put(rng.integers(0, 256, (256, image_size, image_size, 1), dtype=np.uint8))
  infer_fn = jax.jit(learning.eval_step)
  infer_flops = _model_flops(infer_fn, holder["state"], infer_batch)
  infer = infer_fn.lower(holder["state"], infer_batch).compile()
  # At batch 256 one of malloc's single arena's free blocks is sometimes too small for the next
  # call's buffers (1.1 GiB for cnn), so the heap grows and that call faults every page in (3-4x its
  # time, about one call in fifteen; benchmarks/RESULTS.md, "Inference after the train step").
  # One warm-up as in ../shared/bench, then the median of ten calls, so one or two such calls do
  # not set the figure; the faults are reported.
  one_infer = lambda: infer(holder["state"], infer_batch)
  one_infer().block_until_ready()
  infer_s, infer_faults = _timed(one_infer, 10)
  out = {"framework": "jax-flax", "version": f"jax {jax.__version__}", "model": name, **({"recipe": recipe} if recipe else {}),
         "device": str(jax.devices()[0]),
         "device_kind": jax.devices()[0].device_kind,
         "batch": batch, "params": learning.param_count(state.params), "augment": augment,
         **({"augment_config": dataclasses.asdict(config.augment_config)} if augment else {}), "dtype": config.dtype,
         "conv": kinds, "conv_kernel_grad": conv_kernel_grad(kinds), "train_xla_options": compile_options.compiler_options(),
         "malloc": MALLOC, "train_page_faults_per_step": round(faults_per_step),
         "infer_page_faults_per_call": round(infer_faults),
         "train_compile_s": round(compile_s, 1),
         "train_img_per_s": round(batch / train_s, 1), "infer_img_per_s": round(256 / infer_s, 1), **scheduled,
         **profiled}
  if train_flops:
    out["train_gflop_per_image"] = round(train_flops / batch / 1e9, 3)
    out["train_gflop_per_s"] = round(train_flops / train_s / 1e9, 1)
  if infer_flops:
    out["infer_gflop_per_s"] = round(infer_flops / infer_s / 1e9, 1)
  return out, one_step, one_infer


def bench_pipeline(data_dir: str, tfds_data_dir: str, image_size: int, batch: int, turnover_epochs: int = 0,
                   train_step: Callable[[], jax.Array] | None = None) -> dict:
  """Images/s of one cold epoch (read, decode, resize, fill the cache) and of a cached one.

  With `turnover_epochs`, also the seconds to drop an epoch's iterator, as the trainer does
  at every epoch's end: each batch is consumed by one call of `train_step` (so XLA keeps
  the cores as busy as in training), then the iterator is deleted and collected, timed.
  The pipeline as shipped (tf.data autotuning off) and with autotuning switched back on
  alternate, epoch by epoch, in one process.
  """
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  from xray_jax import chest_xray, input_pipeline  # pylint: disable=g-import-not-at-top
  t = time.perf_counter()
  builder = chest_xray.load_builder(data_dir=data_dir, tfds_data_dir=tfds_data_dir, image_size=image_size)
  prepare_s = time.perf_counter() - t
  ds = input_pipeline.load_split(builder, "train", image_size)
  n = input_pipeline.num_examples(builder, "train")
  batches = functools.partial(input_pipeline.train_batches, num_examples=n, batch_size=batch, seed=0)
  result = {"pipeline_examples": n, "prepare_s": round(prepare_s, 1)}
  for label, epoch in (("cold", 0), ("cached", 1)):
    t = time.perf_counter()
    seen = sum(len(b["label"]) for b in batches(ds, epoch=epoch))
    result[f"pipeline_{label}_img_per_s"] = round(seen / (time.perf_counter() - t), 1)
  if not turnover_epochs:
    return result

  tuned = tf.data.Options()
  tuned.autotune.enabled = True
  variants = {"shipped": ds, "autotune": ds.with_options(tuned)}
  sum(1 for _ in batches(variants["autotune"], epoch=0))  # its cache filled before timing anything
  drop_s: dict[str, list[float]] = {k: [] for k in variants}
  epoch_s: dict[str, list[float]] = {k: [] for k in variants}
  for epoch in range(1, turnover_epochs + 1):
    for name, variant in variants.items():
      t = time.perf_counter()
      it = batches(variant, epoch=epoch)
      for _ in it:
        train_step().block_until_ready()
      epoch_s[name].append(time.perf_counter() - t)
      t = time.perf_counter()
      del it
      gc.collect()  # the iterator sits in a reference cycle: freed by the collector, whenever it runs
      drop_s[name].append(time.perf_counter() - t)
  result["turnover_epochs"] = turnover_epochs
  for name in variants:
    result[f"turnover_{name}_s"] = [round(x, 2) for x in drop_s[name]]
    result[f"turnover_{name}_total_s"] = round(sum(drop_s[name]), 1)
    result[f"turnover_{name}_epoch_s"] = [round(x, 1) for x in epoch_s[name]]  # consuming it
  return result


def _repeated_copy(image_dir: str, repeat: int, dest: str) -> str:
  """`dest` holding each file of image_dir's class folders `repeat` times under new names."""
  for cls in sorted(os.listdir(image_dir)):
    if not os.path.isdir(os.path.join(image_dir, cls)):
      continue
    os.makedirs(os.path.join(dest, cls))
    for f in sorted(os.listdir(os.path.join(image_dir, cls))):
      stem, ext = os.path.splitext(f)
      for k in range(repeat):
        shutil.copyfile(os.path.join(image_dir, cls, f), os.path.join(dest, cls, f"{stem}-copy{k}{ext}"))
  return dest


def bench_originals(image_dir: str, image_size: int, repeat: int = 1) -> dict:
  """Images/s from original files (decode, grayscale, shrink, resize) through --image_dir's reader.

  With repeat > 1 the files are first copied that many times, so that tf.data's start-up
  (included in the time) is spread over enough images. The copies sit in the OS page
  cache: this times decoding and resizing, not a cold disk.
  """
  from xray_jax import chest_xray, input_pipeline  # pylint: disable=g-import-not-at-top
  with tempfile.TemporaryDirectory() as tmp:
    if repeat > 1:
      image_dir = _repeated_copy(image_dir, repeat, os.path.join(tmp, "originals"))
    t = time.perf_counter()
    max_side = chest_xray.config_for_image_size(image_size).max_side
    ds, _, records = input_pipeline.folder_dataset(image_dir, image_size=image_size, max_side=max_side)
    n = sum(1 for _ in ds.as_numpy_iterator())
    seconds = time.perf_counter() - t
    pixels = [Image.open(r.path).size for r in records]
  return {"originals_examples": n, "originals_median_pixels": int(np.median([w * h for w, h in pixels])),
          "originals_cold_img_per_s": round(n / seconds, 1)}


def run_reference(script: str, steps: int, batch: int) -> dict | None:
  module = "tensorflow" if "keras" in script else "torch"
  if importlib.util.find_spec(module) is None or not os.path.exists(script):
    print(f"# skipped {script}: {module} not installed or script missing", file=sys.stderr)
    return None
  r = subprocess.run([sys.executable, script, "--steps", str(steps), "--batch", str(batch)], capture_output=True,
                     text=True, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
  lines = [l for l in r.stdout.splitlines() if l.startswith("{")]
  if r.returncode or not lines:
    print(f"# {script} failed: {r.stderr[-1000:]}", file=sys.stderr)
    return None
  return json.loads(lines[-1])


def compare(jax_calls: tuple[Callable[[], jax.Array], Callable[[], jax.Array]] | None, scripts: list[str],
            rounds: int, steps: int, batch: int) -> list[dict]:
  """Rows of the reference scripts, each run `rounds` times in turn, the JAX refcnn re-timed just before each run.

  Each ratio is taken between neighbouring measurements, and the figure is the median over the
  rounds: this machine's speed drifts by 10-30% over minutes, which would otherwise fall on one
  framework's turn. Each row keeps the JAX rates its ratios used.
  """
  # Per script, each run's row beside the JAX (train, inference) rates taken just before it.
  runs: dict[str, list[tuple[dict, tuple[float, float] | None]]] = {s: [] for s in scripts}
  live = list(scripts)
  for _ in range(max(1, rounds)):
    for script in list(live):
      rates = None
      if jax_calls is not None:
        train_call, infer_call = jax_calls
        rates = (round(batch / _timed(train_call, steps)[0], 1), round(256 / _timed(infer_call, 10)[0], 1))
      ref = run_reference(script, steps, batch)
      if ref is None:  # not installed, or failed: said on stderr once
        live.remove(script)
      else:
        runs[script].append((ref, rates))
  out = []
  for script in scripts:
    if not runs[script]:
      continue
    refs, jax_rates = zip(*runs[script])
    row = dict(refs[0], rounds=len(refs))
    for i, kind in enumerate(("train", "infer")):
      row[f"{kind}_img_per_s_rounds"] = [x[f"{kind}_img_per_s"] for x in refs]
      row[f"{kind}_img_per_s"] = statistics.median(row[f"{kind}_img_per_s_rounds"])
      if jax_calls is not None:
        ratios = [j[i] / x[f"{kind}_img_per_s"] for j, x in zip(jax_rates, refs)]
        row[f"jax_refcnn_{kind}_img_per_s_rounds"] = [j[i] for j in jax_rates]
        row[f"jax_refcnn_{kind}_speedup_rounds"] = [round(r, 3) for r in ratios]
        row[f"jax_refcnn_{kind}_speedup"] = round(statistics.median(ratios), 2)
    out.append(row)
  return out


def interleave(rows: list[dict], train_steps: list[Callable[[], jax.Array]], rounds: int, steps: int) -> None:
  """Times each model's step `steps` times per round, the models in turn, and adds the figures to its row."""
  per_round = [[] for _ in rows]
  for _ in range(rounds):
    for row, rates, one_step in zip(rows, per_round, train_steps):
      rates.append(row["batch"] / _timed(one_step, steps)[0])
  first = statistics.median(per_round[0])
  for row, rates in zip(rows, per_round):
    row["train_img_per_s_rounds"] = [round(r, 1) for r in rates]
    row["train_img_per_s_interleaved"] = round(statistics.median(rates), 1)
    row["train_speedup_vs_first_model"] = round(statistics.median(rates) / first, 3)


def main():
  ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  ap.add_argument("--model", action="append", help="model name(s); default refcnn")
  ap.add_argument("--batch", type=int, default=64)
  ap.add_argument("--steps", type=int, default=30)
  ap.add_argument("--image_size", type=int, default=128)
  ap.add_argument("--augment", action="store_true", help="include on-device augmentation in the step "
                  "(the default ranges, without blur or noise: --recipe times a recipe's own)")
  ap.add_argument("--recipe", action="append", default=[],
                  help="a train flag file (experiments/<name>.flags), timed as it trains: its model, batch, image "
                  "size, dtype and augmentation, whatever --batch, --image_size, --dtype and --augment say; after "
                  "any --model rows. With a --size_schedule, also its step at each size and the run's mean rate")
  ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"], help="compute dtype")
  ap.add_argument("--plain_conv", action="store_true",
                  help="models use nn.Conv instead of layers.Conv: what layers.Conv's gradient passes deliver "
                  "(on CPU: one-channel inputs by default, every kernel gradient under XRAY_JAX_CPU_CONV=ynnpack)")
  ap.add_argument("--data_dir", help="also time the input pipeline on this Kaggle-layout folder")
  ap.add_argument("--tfds_data_dir", default=os.path.join(REPO, "runs", "tfds_bench"))
  ap.add_argument("--turnover_epochs", type=int, default=0,
                  help="with --data_dir: also time dropping each epoch's iterator over this many epochs (each "
                  "batch consumed by one train step), tf.data autotuning off (as shipped) and on, alternating")
  ap.add_argument("--originals_dir", help="also time a cold read of original files in this folder "
                  "(NORMAL/, PNEUMONIA/), e.g. the full-resolution Kaggle val/ or test/")
  ap.add_argument("--originals_repeat", type=int, default=1,
                  help="read each file of --originals_dir this many times (copies), e.g. 20 for the 16 of val/")
  ap.add_argument("--compare", action="store_true", help="also run the Keras and PyTorch reference scripts")
  ap.add_argument("--compare_rounds", type=int, default=1,
                  help="with --compare: run each reference script this many times, the JAX refcnn re-timed just "
                  "before each run, and report the median of those ratios, so a drift of the machine's speed "
                  "during one framework's turn does not set the figure")
  ap.add_argument("--bench_dir", default=os.path.join(REPO, "..", "shared", "bench"))
  ap.add_argument("--matmul_size", type=int, default=2048,
                  help="side of the square matmul that measures the ceiling, in the compute --dtype; "
                  "2048 fills 2 CPU cores, a GPU needs about 8192")
  ap.add_argument("--peak_tflops", type=float,
                  help="the device's datasheet peak in the compute dtype (e.g. 989 for an H100 SXM in dense "
                  "bfloat16): adds train_mfu, model FLOPs per second over this peak")
  ap.add_argument("--rounds", type=int, default=0,
                  help="with several --model: then time their train steps again in this many interleaved rounds "
                  "of --steps each (every model once per round), so a drift of the machine's speed falls on all "
                  "of them alike; adds train_img_per_s_rounds, its median, and the speed-up over the first model")
  ap.add_argument("--profile_dir",
                  help="also trace --profile_steps train steps of each model after its timed ones (jax.profiler) and "
                  "write where the time goes per XLA op, with its HLO and bytes, to DIR/<model>_train_ops.md")
  ap.add_argument("--profile_steps", type=int, default=5)
  ap.add_argument("--json", action="store_true", help="one JSON line per framework/model, nothing else")
  args = ap.parse_args()

  if args.plain_conv:
    layers.Conv = nn.Conv  # models look layers.Conv up when they are called
  ceiling = matmul_ceiling(args.matmul_size, args.dtype)
  rows, train_steps, infer_calls = [], [], []
  benched = [(learning.TrainConfig(model=name, image_size=args.image_size, batch_size=args.batch, dtype=args.dtype,
                                   augment=args.augment), None)
             for name in args.model or ([] if args.recipe else ["refcnn"])]
  benched += [(recipe_config(path), os.path.splitext(os.path.basename(path))[0]) for path in args.recipe]
  for config, recipe in benched:
    row, train_step, infer_call = bench_model(config, steps=args.steps, recipe=recipe, profile_dir=args.profile_dir,
                                              profile_steps=args.profile_steps)
    row.update(matmul_gflop_per_s=round(ceiling, 1), matmul_size=args.matmul_size, matmul_dtype=args.dtype)
    if "train_gflop_per_s" in row:
      row["train_fraction_of_matmul"] = round(row["train_gflop_per_s"] / ceiling, 3)
      if args.peak_tflops:
        row["train_mfu"] = round(row["train_gflop_per_s"] / (args.peak_tflops * 1e3), 4)
        row["infer_mfu"] = round(row.get("infer_gflop_per_s", 0.0) / (args.peak_tflops * 1e3), 4)
    row["peak_rss_mib"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    stats = jax.devices()[0].memory_stats() or {}
    if "peak_bytes_in_use" in stats:
      row["peak_device_mib"] = round(stats["peak_bytes_in_use"] / 2**20, 1)
    if args.data_dir:
      row.update(bench_pipeline(args.data_dir, args.tfds_data_dir, config.image_size, config.batch_size,
                                args.turnover_epochs, train_step))
      row["pipeline_to_step_ratio"] = round(row["pipeline_cached_img_per_s"] / row["train_img_per_s"], 1)
    if args.originals_dir:
      row.update(bench_originals(args.originals_dir, config.image_size, args.originals_repeat))
      row["originals_to_step_ratio"] = round(row["originals_cold_img_per_s"] / row["train_img_per_s"], 2)
    rows.append(row)
    train_steps.append(train_step)
    infer_calls.append(infer_call)
  if args.rounds:
    interleave(rows, train_steps, args.rounds, args.steps)
  if args.compare:
    jax_ref = next((i for i, r in enumerate(rows) if r["model"] == "refcnn"), None)
    rows += compare((train_steps[jax_ref], infer_calls[jax_ref]) if jax_ref is not None else None,
                    [os.path.join(args.bench_dir, s) for s in ("keras_refcnn.py", "torch_refcnn.py")],
                    args.compare_rounds, args.steps, args.batch)
  host = environment.cpu()  # the same record as a training run's environment.jsonl, to tie a day's speed to its host
  for r in rows:
    r["cpu"] = host
    if args.json:
      print(json.dumps(r))
    else:
      print(", ".join(f"{k}={v}" for k, v in r.items()))


if __name__ == "__main__":
  main()
