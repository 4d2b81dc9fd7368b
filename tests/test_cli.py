"""The command lines as a user runs them: wrong use is a one-line error, exit code 2."""

import json
import os
import subprocess
import sys

import pytest

from conftest import REPO, SAMPLE_DIR
from xray_jax import models

ENV = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "JAX_PLATFORMS": "cpu"}


def _run(module, *args, timeout=300):
  return subprocess.run([sys.executable, "-m", module, *args], cwd=REPO, env=ENV, capture_output=True,
                        text=True, timeout=timeout)


@pytest.mark.parametrize("args,message", [
    # The list is whatever files models/ holds; its exact contents are test_models' business.
    (["--model=resnet9000"], f"Unknown --model='resnet9000'; known models: {', '.join(models.available())}. "
                             "To add one, create xray_jax/models/resnet9000.py"),
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


def test_image_size_the_model_cannot_take(prepared_sample, tmp_path):
  _, tfds_dir = prepared_sample
  r = _run("xray_jax.train", "--model=cnn", "--image_size=100", f"--data_dir={SAMPLE_DIR}",
           f"--tfds_data_dir={tfds_dir}", f"--workdir={tmp_path}/wd")
  assert r.returncode == 2 and "Traceback" not in r.stderr
  assert "--model=cnn cannot take --image_size=100" in r.stderr and "divisible by 32" in r.stderr


def test_batch_larger_than_the_split(prepared_sample, tmp_path):
  _, tfds_dir = prepared_sample
  r = _run("xray_jax.train", "--batch_size=5000", f"--data_dir={SAMPLE_DIR}", f"--tfds_data_dir={tfds_dir}",
           f"--workdir={tmp_path}/wd")
  assert r.returncode == 2 and "Traceback" not in r.stderr and "--batch_size=5000 is larger" in r.stderr


def test_train_command_keeps_the_final_checkpoint_and_records_the_machine(prepared_sample, tmp_path):
  _, tfds_dir = prepared_sample
  r = _run("xray_jax.train", "--model=mlp", "--image_size=32", "--batch_size=16", "--num_steps=2",
           "--best_metric=final", f"--data_dir={SAMPLE_DIR}", f"--tfds_data_dir={tfds_dir}", f"--workdir={tmp_path}/wd")
  assert r.returncode == 0, r.stderr[-2000:]
  assert "Final checkpoint: step 2," in r.stdout
  assert os.path.exists(tmp_path / "wd" / "environment.jsonl") and os.path.exists(tmp_path / "wd" / "reports")


def test_verbosity_shows_the_traceback(tmp_path):
  r = _run("xray_jax.train", "--model=resnet9000", "--verbosity=1", f"--workdir={tmp_path}/wd")
  assert r.returncode == 2 and "Traceback" in r.stderr


FLAG_FILES = sorted(f[:-6] for f in os.listdir(os.path.join(REPO, "experiments")) if f.endswith(".flags"))


def _flag_file(name):
  return os.path.join(REPO, "experiments", f"{name}.flags")


# Each kind of flag file, its imports and what it prints: for train the config it would run, for
# evaluate (a file with --ensemble=) the ensemble. One process per kind parses all its files, each
# from absl's defaults (unparse_flags), instead of one process per file: 33 imports of jax and
# TensorFlow cost minutes.
_PARSERS = {"evaluate": ("from xray_jax import evaluate; evaluate.define_flags()", "flags.FLAGS.ensemble"),
            "train": ("from xray_jax import train", "train.config_from_flags()")}
_PARSE_ALL = """
import json, sys
from absl import flags
{setup}
for path in sys.argv[1:]:
  flags.FLAGS.unparse_flags()
  try:
    flags.FLAGS(['x', '--flagfile=' + path])
    out, ok = str({result}), True
  except Exception as e:  # reported per file by the test below
    out, ok = f'{{type(e).__name__}}: {{e}}', False
  print('FLAGFILE', json.dumps({{'path': path, 'ok': ok, 'out': out}}))
"""


@pytest.fixture(scope="module")
def parsed_flag_files():
  """{name: (parsed, what it printed or the error)}; absl checks every name and value."""
  kind = {n: "evaluate" if "--ensemble=" in open(_flag_file(n)).read() else "train" for n in FLAG_FILES}
  parsed = {}
  for k, (setup, result) in _PARSERS.items():
    files = [_flag_file(n) for n in FLAG_FILES if kind[n] == k]
    r = subprocess.run([sys.executable, "-c", _PARSE_ALL.format(setup=setup, result=result), *files], cwd=REPO,
                       env=ENV, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    for line in r.stdout.splitlines():
      if line.startswith("FLAGFILE "):
        row = json.loads(line[len("FLAGFILE "):])
        parsed[os.path.basename(row["path"])[:-6]] = (row["ok"], row["out"])
  return parsed


@pytest.mark.parametrize("name", FLAG_FILES)
def test_every_experiment_flag_file_parses_and_says_how_to_run_it(name, parsed_flag_files):
  text = open(_flag_file(name)).read()
  assert f"--flagfile=experiments/{name}.flags" in text and "Expected" in text  # the header's command and figures
  assert name in parsed_flag_files, "its parsing process printed nothing for it"
  ok, out = parsed_flag_files[name]
  assert ok, out
  if name == "cnn":
    assert "blur=1.0" in out and "noise=0.03" in out and "threshold_rule='stress'" in out
