"""The command lines as a user runs them: one-line errors, and a killed run that resumes."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from conftest import REPO, SAMPLE_DIR

ENV = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "JAX_PLATFORMS": "cpu"}


def _run(module, *args, timeout=300):
  return subprocess.run([sys.executable, "-m", module, *args], cwd=REPO, env=ENV, capture_output=True,
                        text=True, timeout=timeout)


@pytest.mark.parametrize("args,message", [
    (["--model=resnet9000"], "Unknown --model='resnet9000'; known models: cnn, mlp, refcnn"),
    (["--data_dir=/nonexistent/chest_xray"], "--data_dir=/nonexistent/chest_xray does not exist"),
])
def test_train_usage_errors_are_one_line_without_traceback(tmp_path, args, message):
  r = _run("xray_jax.train", f"--workdir={tmp_path}/wd", f"--tfds_data_dir={tmp_path}/tfds", *args)
  assert r.returncode == 2
  assert "Traceback" not in r.stderr
  errors = [l for l in r.stderr.splitlines() if l.startswith("error: ")]
  assert len(errors) == 1 and message in errors[0]


def test_train_without_data_says_where_to_get_it(tmp_path):
  r = _run("xray_jax.train", f"--workdir={tmp_path}/wd", f"--tfds_data_dir={tmp_path}/tfds")
  assert r.returncode == 2 and "Traceback" not in r.stderr
  assert "No prepared chest X-ray data" in r.stderr and "--data_dir=PATH" in r.stderr


def test_evaluate_without_a_run_is_a_clear_error(tmp_path):
  r = _run("xray_jax.evaluate", f"--workdir={tmp_path}", "--split=test")
  assert r.returncode == 2 and "not a training run's workdir" in r.stderr and "Traceback" not in r.stderr


def _finished_steps(workdir):
  d = os.path.join(workdir, "checkpoints")
  return sorted(int(s) for s in os.listdir(d) if s.isdigit()) if os.path.isdir(d) else []


def test_killed_run_resumes_from_its_last_checkpoint_and_finishes(prepared_sample, tmp_path):
  _, tfds_dir = prepared_sample
  workdir = str(tmp_path / "run")
  cmd = [sys.executable, "-m", "xray_jax.train", "--model=cnn", "--image_size=64", f"--data_dir={SAMPLE_DIR}",
         f"--tfds_data_dir={tfds_dir}", f"--workdir={workdir}", "--batch_size=32", "--num_epochs=3",
         "--checkpoint_every_steps=3", "--log_every_steps=1"]
  proc = subprocess.Popen(cmd, cwd=REPO, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
  deadline = time.time() + 240
  while not _finished_steps(workdir) and proc.poll() is None and time.time() < deadline:
    time.sleep(0.2)
  assert proc.poll() is None, "the run ended before it could be killed:\n" + proc.stdout.read()
  proc.send_signal(signal.SIGKILL)  # no chance to clean up, as on a preempted machine
  proc.wait()
  killed_at = _finished_steps(workdir)[-1]
  r = subprocess.run(cmd, cwd=REPO, env=ENV, capture_output=True, text=True, timeout=300)
  assert r.returncode == 0, r.stderr[-3000:]
  assert f"Resuming from step {killed_at}" in r.stderr
  lines = [json.loads(l) for l in open(os.path.join(workdir, "metrics.jsonl"))]
  assert [l["epoch"] for l in lines] == [1.0, 2.0, 3.0]  # each epoch logged once, none lost
  steps_per_epoch = lines[0]["step"]
  assert _finished_steps(workdir)[-1] == 3 * steps_per_epoch
  report = json.load(open(os.path.join(workdir, "reports", "validation.json")))
  assert report["num_examples"] > 0 and 0.0 <= report["roc_auc"] <= 1.0
