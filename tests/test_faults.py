"""Faults: kills, damaged checkpoints, determinism, full or read-only disks, hostile images."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections import namedtuple

import pytest

from conftest import REPO, SAMPLE_DIR
from xray_jax import checkpoints
from xray_jax import evaluate
from xray_jax import learning
from xray_jax import trainer
from xray_jax.errors import UsageError

ENV = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "JAX_PLATFORMS": "cpu"}


def _config(tfds_dir, **kw):
  base = dict(model="cnn", data_dir=SAMPLE_DIR, tfds_data_dir=tfds_dir, image_size=32, batch_size=32,
              num_epochs=3, checkpoint_every_steps=3, log_every_steps=1)
  return learning.TrainConfig(**{**base, **kw})


def _cmd(config, workdir):
  flags = [f"--{k}={v}" for k, v in config.to_json().items() if k not in ("augment_config", "num_classes", "augment")]
  return [sys.executable, "-m", "xray_jax.train", f"--workdir={workdir}", *flags]


def _steps(workdir, kind=checkpoints.LATEST):
  d = os.path.join(workdir, kind)
  return sorted(int(s) for s in os.listdir(d) if s.isdigit()) if os.path.isdir(d) else []


def _final_digest(workdir):
  _, state, _ = evaluate.restore_for_eval(workdir, "latest")
  return int(state.step), checkpoints.tree_digest(state.params), checkpoints.tree_digest(state)


@pytest.fixture(scope="module")
def uninterrupted(prepared_sample, tmp_path_factory):
  _, tfds_dir = prepared_sample
  config = _config(tfds_dir)
  workdir = str(tmp_path_factory.mktemp("uninterrupted"))
  trainer.train_and_evaluate(config, workdir)
  return config, workdir


def test_sigkill_during_a_save_then_resume_gives_the_same_final_state(uninterrupted, tmp_path):
  config, reference = uninterrupted
  workdir = str(tmp_path / "killed")
  proc = subprocess.Popen(_cmd(config, workdir), cwd=REPO, env=ENV, stdout=subprocess.DEVNULL,
                          stderr=subprocess.DEVNULL)
  ckpt_dir = os.path.join(workdir, checkpoints.LATEST)
  deadline, saw_tmp = time.time() + 240, False
  # Kill the moment a checkpoint is being written (Orbax's temporary folder is there),
  # once one complete checkpoint exists to resume from.
  while proc.poll() is None and time.time() < deadline:
    entries = os.listdir(ckpt_dir) if os.path.isdir(ckpt_dir) else []
    saw_tmp = any("tmp" in e for e in entries)
    if _steps(workdir) and saw_tmp:
      break
    time.sleep(0.005)
  assert proc.poll() is None, "the run ended before it could be killed"
  proc.send_signal(signal.SIGKILL)  # no clean-up, as on a preempted machine
  proc.wait()
  killed_at = _steps(workdir)[-1]
  assert killed_at < 24
  r = subprocess.run(_cmd(config, workdir), cwd=REPO, env=ENV, capture_output=True, text=True, timeout=300)
  assert r.returncode == 0, r.stderr[-3000:]
  assert f"Resuming from step {killed_at}" in r.stderr
  # Same batches, same keys, same updates: bit-identical to the run that was never stopped.
  assert _final_digest(workdir) == _final_digest(reference)
  lines = [json.loads(l) for l in open(os.path.join(workdir, "metrics.jsonl"))]
  ref_lines = [json.loads(l) for l in open(os.path.join(reference, "metrics.jsonl"))]
  assert [l["epoch"] for l in lines] == [1.0, 2.0, 3.0]  # each epoch logged once, none lost
  for a, b in zip(lines, ref_lines):  # validation never depends on where the run was stopped
    assert {k: v for k, v in a.items() if k.startswith("val_")} == {k: v for k, v in b.items() if k.startswith("val_")}


def test_same_flags_and_seed_give_identical_metrics(uninterrupted, tmp_path):
  config, reference = uninterrupted
  trainer.train_and_evaluate(config, str(tmp_path))
  assert open(os.path.join(tmp_path, "metrics.jsonl")).read() == open(os.path.join(reference, "metrics.jsonl")).read()
  assert _final_digest(str(tmp_path)) == _final_digest(reference)


def test_half_written_checkpoint_is_never_restored(uninterrupted, tmp_path, caplog):
  config, reference = uninterrupted
  workdir = str(tmp_path / "run")
  shutil.copytree(reference, workdir)
  last = _steps(workdir)[-1]
  # What a save killed half-way leaves: Orbax's temporary folder with partial content.
  half = os.path.join(workdir, checkpoints.LATEST, f"{last + 100}.orbax-checkpoint-tmp-1234")
  shutil.copytree(os.path.join(workdir, checkpoints.LATEST, str(last)), half)
  os.remove(os.path.join(half, "state", "manifest.ocdbt"))
  more = learning.TrainConfig(**{**config.__dict__, "num_epochs": 4})
  trainer.train_and_evaluate(more, workdir)
  assert _steps(workdir)[-1] == 32  # resumed from the complete checkpoint and went on


def _damage(step_dir):
  """Truncates the largest data file of a checkpoint, as a full disk or a bad copy would."""
  files = [os.path.join(d, f) for d, _, fs in os.walk(os.path.join(step_dir, "state")) for f in fs]
  biggest = max(files, key=os.path.getsize)
  with open(biggest, "r+b") as f:
    f.truncate(os.path.getsize(biggest) // 2)


def _flip_bytes(step_dir):
  files = [os.path.join(d, f) for d, _, fs in os.walk(os.path.join(step_dir, "state")) for f in fs]
  biggest = max(files, key=os.path.getsize)
  with open(biggest, "r+b") as f:
    f.seek(os.path.getsize(biggest) // 2)
    data = f.read(64)
    f.seek(os.path.getsize(biggest) // 2)
    f.write(bytes(b ^ 0xFF for b in data))


# Orbax's failed restore of a truncated file leaves the other arrays' read coroutines
# un-awaited, and one of them reports later that its event loop is closed (reproduced with
# Orbax 0.12.8 alone: a CheckpointManager, two jax arrays, one file cut in half). Upstream,
# and harmless here: the run falls back as asserted below.
@pytest.mark.filterwarnings("ignore:Exception ignored in:pytest.PytestUnraisableExceptionWarning")
@pytest.mark.parametrize("damage", [_damage, _flip_bytes])
def test_damaged_latest_checkpoint_falls_back_to_the_previous_one(uninterrupted, tmp_path, damage, caplog):
  config, reference = uninterrupted
  workdir = str(tmp_path / "run")
  shutil.copytree(reference, workdir)
  older, newest = _steps(workdir)[-2:]
  damage(os.path.join(workdir, checkpoints.LATEST, str(newest)))
  trainer.train_and_evaluate(config, workdir)  # resumes from `older`, trains up to `newest` again
  warnings = [r.getMessage() for r in caplog.records if "is damaged" in r.getMessage()]
  assert len(warnings) == 1
  assert os.path.join(checkpoints.LATEST, str(newest)) in warnings[0]
  assert f"falling back to {os.path.join(workdir, checkpoints.LATEST, str(older))}" in warnings[0]
  assert _steps(workdir)[-1] == newest
  assert os.listdir(os.path.join(workdir, checkpoints.DAMAGED))  # kept for a look, out of the way
  assert _final_digest(workdir) == _final_digest(reference)


def test_evaluation_refuses_a_damaged_checkpoint(uninterrupted, tmp_path):
  config, reference = uninterrupted
  workdir = str(tmp_path / "run")
  shutil.copytree(reference, workdir)
  _flip_bytes(os.path.join(workdir, checkpoints.BEST, str(_steps(workdir, checkpoints.BEST)[-1])))
  with pytest.raises(UsageError, match=r"Refusing to evaluate a damaged checkpoint: .*best/\d+ does not match"):
    evaluate.evaluate_workdir(workdir, split="validation")


def test_unwritable_workdir_is_refused_before_training(prepared_sample, tmp_path):
  _, tfds_dir = prepared_sample
  blocker = tmp_path / "a_file"
  blocker.write_text("not a folder")
  with pytest.raises(UsageError, match=r"Cannot write to --workdir=.*a_file/run.*writable folder"):
    trainer.train_and_evaluate(_config(tfds_dir), str(blocker / "run"))
  if os.path.isdir("/proc/self"):  # a read-only file system
    with pytest.raises(UsageError, match="Cannot write to --workdir=/proc/self/xray_run"):
      trainer.train_and_evaluate(_config(tfds_dir), "/proc/self/xray_run")


def test_full_disk_is_refused_before_training(prepared_sample, tmp_path, monkeypatch):
  _, tfds_dir = prepared_sample
  usage = namedtuple("usage", "total used free")
  monkeypatch.setattr(shutil, "disk_usage", lambda path: usage(10 * 2**20, 10 * 2**20 - 4096, 4096))
  with pytest.raises(UsageError, match=r"has 0 MiB free; this run's checkpoints need about \d+ MiB"):
    trainer.train_and_evaluate(_config(tfds_dir), str(tmp_path))
  assert not os.path.exists(tmp_path / checkpoints.LATEST)  # refused before anything was trained


def test_a_run_killed_in_its_low_resolution_epochs_resumes_at_their_size(prepared_sample, tmp_path):
  # Two epochs at 32 px, then one at 64 (8 steps an epoch on the sample): a kill in the first two must
  # resume at 32 px with the same state, and the run must end where one never stopped ends.
  _, tfds_dir = prepared_sample
  config = _config(tfds_dir, image_size=64, size_schedule="32:2")
  reference = str(tmp_path / "reference")
  trainer.train_and_evaluate(config, reference)
  workdir = str(tmp_path / "killed")
  proc = subprocess.Popen(_cmd(config, workdir), cwd=REPO, env=ENV, stdout=subprocess.DEVNULL,
                          stderr=subprocess.DEVNULL)
  deadline = time.time() + 240
  while proc.poll() is None and time.time() < deadline and not _steps(workdir):
    time.sleep(0.005)
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  killed_at = _steps(workdir)[-1]
  assert killed_at < 16, f"killed at step {killed_at}, after the 32-px epochs: this test needs an earlier kill"
  r = subprocess.run(_cmd(config, workdir), cwd=REPO, env=ENV, capture_output=True, text=True, timeout=300)
  assert r.returncode == 0, r.stderr[-3000:]
  assert f"Resuming from step {killed_at}" in r.stderr
  assert f"Epoch {killed_at // 8 + 1} trains at 32x32" in r.stderr
  assert _final_digest(workdir) == _final_digest(reference)
  val = lambda wd: [{k: v for k, v in json.loads(l).items() if not k.startswith("train_")}
                    for l in open(os.path.join(wd, "metrics.jsonl"))]  # train_: the resumed epoch's steps only
  assert val(workdir) == val(reference)
