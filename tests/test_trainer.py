"""The train step, the loop, checkpoints and reports, on the real sample images."""

import csv
import dataclasses
import functools
import json
import os
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest
from flax.training import train_state

from conftest import SAMPLE_DIR
from xray_jax import checkpoints
from xray_jax import environment
from xray_jax import evaluate
from xray_jax import images
from xray_jax import learning
from xray_jax import models
from xray_jax import trainer
from xray_jax.errors import UsageError


def _state(model_name="refcnn", size=32):
  config = learning.TrainConfig(model=model_name, image_size=size)
  model = models.get_model(model_name)
  return config, learning.create_train_state(config, model, jax.random.key(0), lambda s: 1e-3)


def _batch(size=32, n=8):
  rng = np.random.default_rng(0)
  return {"image": rng.integers(0, 256, (n, size, size, 1), dtype=np.uint8),
          "label": np.array([0, 1] * (n // 2), np.int32)}


def test_train_step_without_augmentation_sees_the_raw_images():
  _, state = _state()
  batch, w = _batch(), jnp.array([1.5, 0.5])
  step = jax.jit(functools.partial(learning.train_step, class_weights=w, augment_config=None))
  _, m = step(state, batch, jax.random.key(1))
  logits, _ = state.apply_fn({"params": state.params, "batch_stats": state.batch_stats},
                             batch["image"] / 255.0, train=True, mutable=["batch_stats"])
  logp = jax.nn.log_softmax(logits)
  expected = -jnp.mean(logp[jnp.arange(8), batch["label"]] * w[batch["label"]])
  assert float(m["loss"]) == pytest.approx(float(expected), rel=1e-5)


def test_size_schedule_names_the_size_of_every_epoch_and_refuses_bad_specs():
  config = learning.TrainConfig(image_size=128, num_epochs=10, size_schedule="64:2, 96:3")
  assert learning.size_schedule(config) == ((64, 2), (96, 3))
  assert [learning.train_size_at(config, e) for e in range(10)] == [64, 64, 96, 96, 96] + [128] * 5
  assert [learning.train_size_at(dataclasses.replace(config, size_schedule=""), e) for e in (0, 9)] == [128, 128]
  for bad, says in (("64", "SIZE:EPOCHS"), ("64:0", "SIZE:EPOCHS"), ("x:1", "SIZE:EPOCHS"), ("64:2,", "SIZE:EPOCHS"),
                    ("128:1", "below --image_size"), ("64:4,96:6", "at least the last")):
    with pytest.raises(UsageError, match=f"--size_schedule=.*{says}"):
      learning.size_schedule(dataclasses.replace(config, size_schedule=bad))


@pytest.mark.parametrize("model_name,size,schedule", [("cnn", 128, "80:1"), ("mlp", 64, "32:1")])
def test_a_size_the_model_cannot_take_is_refused_before_training(model_name, size, schedule):
  # cnn pools five times (80 is not a multiple of 32); the MLP's first layer is sized by its input.
  config = learning.TrainConfig(model=model_name, image_size=size, size_schedule=schedule)
  with pytest.raises(UsageError, match=f"--model={model_name} cannot take size .* of --size_schedule"):
    learning.create_train_state(config, models.get_model(model_name), jax.random.key(0), lambda s: 1e-3)


def test_downscale_is_the_input_pipelines_antialiased_resize():
  import tensorflow as tf  # the pipeline's and the stress set's resize, the reference
  x = np.random.default_rng(0).random((2, 64, 64, 1)).astype(np.float32)
  for size in (32, 48):
    ref = tf.image.resize(x, (size, size), method="bilinear", antialias=True).numpy()
    np.testing.assert_allclose(np.asarray(learning.downscale(jnp.asarray(x), size)), ref, atol=2e-6)


def test_train_step_at_a_lower_size_feeds_the_model_the_downscaled_images():
  config, state = _state(size=64)
  batch, w = _batch(size=64), jnp.array([1.5, 0.5])
  config = dataclasses.replace(config, augment=False)
  _, m = jax.jit(learning.train_step_for(config, w, train_size=32))(state, batch, jax.random.key(1))
  logits, _ = state.apply_fn({"params": state.params, "batch_stats": state.batch_stats},
                             learning.downscale(batch["image"] / 255.0, 32), train=True, mutable=["batch_stats"])
  logp = jax.nn.log_softmax(logits)
  expected = -jnp.mean(logp[jnp.arange(8), batch["label"]] * w[batch["label"]])
  assert float(m["loss"]) == pytest.approx(float(expected), rel=1e-5)
  _, full = jax.jit(learning.train_step_for(config, w, train_size=64))(state, batch, jax.random.key(1))
  assert float(full["loss"]) != pytest.approx(float(m["loss"]), rel=1e-3)  # the full size is another step


def test_train_step_is_pure_and_reproducible():
  config, state = _state()
  step = jax.jit(functools.partial(learning.train_step, class_weights=jnp.ones(2),
                                   augment_config=config.augment_config))
  s1, m1 = step(state, _batch(), jax.random.key(1))
  s2, m2 = step(state, _batch(), jax.random.key(1))
  assert int(s1.step) == 1 and int(state.step) == 0  # the input state is untouched
  for a, b in zip(jax.tree.leaves((s1, m1)), jax.tree.leaves((s2, m2))):
    np.testing.assert_array_equal(a, b)  # same inputs and key: bit-identical on CPU
  _, m3 = step(state, _batch(), jax.random.key(2))  # another key: another augmentation
  assert float(m3["loss"]) != float(m1["loss"])


def test_mixup_is_off_by_default_and_changes_the_step_when_on():
  config, state = _state()
  kw = dict(class_weights=jnp.ones(2), augment_config=config.augment_config)
  plain = jax.jit(functools.partial(learning.train_step, **kw))
  off = jax.jit(functools.partial(learning.train_step, **kw, mixup_alpha=0.0))
  on = jax.jit(functools.partial(learning.train_step, **kw, mixup_alpha=0.4))
  _, m_plain = plain(state, _batch(), jax.random.key(1))
  _, m_off = off(state, _batch(), jax.random.key(1))
  s_on, m_on = on(state, _batch(), jax.random.key(1))
  np.testing.assert_array_equal(m_plain["prob"], m_off["prob"])  # mixup off draws the same numbers
  assert not np.allclose(m_plain["prob"], m_on["prob"]) and np.isfinite(float(m_on["loss"]))
  np.testing.assert_array_equal(m_on["label"], _batch()["label"])  # metrics keep each image's own label
  assert int(s_on.step) == 1


def test_eval_step_never_augments():
  _, state = _state()
  batch = _batch()
  probs = learning.eval_step(state, jnp.asarray(batch["image"]))
  logits = state.apply_fn({"params": state.params, "batch_stats": state.batch_stats}, batch["image"] / 255.0,
                          train=False)
  np.testing.assert_allclose(probs, jax.nn.softmax(logits), rtol=1e-5, atol=1e-6)


def test_moving_average_is_off_by_default_and_follows_the_weights_when_on():
  config, state = _state()
  assert state.ema is None  # nothing extra in the state or its checkpoints
  kw = dict(class_weights=jnp.ones(2), augment_config=None)
  config = dataclasses.replace(config, ema_decay=0.9)
  state = learning.create_train_state(config, models.get_model("refcnn"), jax.random.key(0), lambda s: 1e-3)
  jax.tree.map(np.testing.assert_array_equal, state.ema, {"params": state.params, "batch_stats": state.batch_stats})
  step = jax.jit(functools.partial(learning.train_step, **kw, ema_decay=0.9))
  expected = state.ema
  for i in range(1, 4):
    state, _ = step(state, _batch(), jax.random.key(1))
    d = min(0.9, (1 + i) / (10 + i))  # the first steps move it more
    expected = jax.tree.map(lambda e, x: d * e + (1 - d) * x, expected,
                            {"params": state.params, "batch_stats": state.batch_stats})
  jax.tree.map(functools.partial(np.testing.assert_allclose, rtol=1e-5, atol=1e-7), state.ema, expected)
  # Evaluation uses the average, not the last weights.
  images = jnp.asarray(_batch()["image"])
  probs = learning.eval_step(state, images)
  np.testing.assert_allclose(probs, jax.nn.softmax(state.apply_fn(state.ema, images / 255.0, train=False)),
                             rtol=1e-5, atol=1e-6)
  last = jax.nn.softmax(state.apply_fn({"params": state.params, "batch_stats": state.batch_stats}, images / 255.0,
                                       train=False))
  assert not np.allclose(probs, last, atol=1e-4)
  with pytest.raises(UsageError, match=r"--ema_decay=1.0 must be in \[0, 1\)"):
    learning.create_train_state(dataclasses.replace(config, ema_decay=1.0), models.get_model("refcnn"),
                                jax.random.key(0), lambda s: 1e-3)


def test_checkpoints_written_before_the_moving_average_existed_still_restore(tmp_path):
  class Before(train_state.TrainState):  # TrainState as it was, saved whole by Orbax
    batch_stats: Any = None

  _, state = _state()
  old = Before.create(apply_fn=state.apply_fn, params=jax.tree.map(lambda p: p + 1.0, state.params), tx=state.tx,
                      batch_stats=state.batch_stats).replace(step=jnp.asarray(7, jnp.int32))
  with checkpoints.manager(str(tmp_path), checkpoints.LATEST, max_to_keep=1) as mngr:
    mngr.save(7, args=ocp.args.Composite(state=ocp.args.StandardSave(jax.device_get(old)),
                                         meta=ocp.args.JsonSave({"state_sha256": checkpoints.tree_digest(old)})))
    mngr.wait_until_finished()
    restored, _ = checkpoints.restore(mngr, 7, state)  # the digest is checked too
  assert restored.ema is None and int(restored.step) == 7
  jax.tree.map(np.testing.assert_array_equal, restored.params, old.params)


def test_is_better_prefers_metric_then_lower_loss():
  a = {"roc_auc": 0.9, "loss": 0.5, "accuracy": 0.8}
  assert trainer.is_better(a, None, "roc_auc")
  assert trainer.is_better({**a, "roc_auc": 0.95}, a, "roc_auc")
  assert trainer.is_better({**a, "loss": 0.4}, a, "roc_auc")  # tie on AUC, lower loss
  assert not trainer.is_better(a, a, "roc_auc")
  assert trainer.is_better({**a, "loss": 0.4}, a, "loss")
  assert not trainer.is_better({**a, "roc_auc": float("nan")}, a, "roc_auc")
  for worse in ({**a, "roc_auc": 0.5, "loss": 2.0}, {**a, "roc_auc": float("nan")}):
    assert trainer.is_better(worse, a, "final")  # no selection: the newer checkpoint always wins


@pytest.fixture(scope="module")
def trained(prepared_sample, tmp_path_factory):
  """A few real training steps on the sample: 2 epochs of the CNN at 64x64."""
  _, tfds_dir = prepared_sample
  workdir = str(tmp_path_factory.mktemp("run"))
  config = learning.TrainConfig(model="cnn", data_dir=SAMPLE_DIR, tfds_data_dir=tfds_dir, image_size=64,
                               batch_size=32, num_epochs=2, log_every_steps=2)
  best = trainer.train_and_evaluate(config, workdir)
  return config, workdir, best


def test_training_writes_metrics_checkpoints_and_tensorboard(trained):
  config, workdir, best = trained
  lines = [json.loads(l) for l in open(os.path.join(workdir, "metrics.jsonl"))]
  assert [l["epoch"] for l in lines] == [1.0, 2.0]
  for key in ("train_loss", "train_accuracy", "train_roc_auc", "val_loss", "val_accuracy", "val_roc_auc"):
    assert all(np.isfinite(l[key]) for l in lines), key
  steps_per_epoch = lines[0]["step"]
  assert os.listdir(os.path.join(workdir, "checkpoints")) and sorted(
      int(s) for s in os.listdir(os.path.join(workdir, "checkpoints")) if s.isdigit())[-1] == 2 * steps_per_epoch
  assert best["step"] in (steps_per_epoch, 2 * steps_per_epoch)
  assert os.listdir(os.path.join(workdir, "tensorboard"))
  assert json.load(open(os.path.join(workdir, "config.json")))["model"] == "cnn"


def test_rerunning_a_finished_run_resumes_and_does_nothing(trained):
  config, workdir, best = trained
  before = open(os.path.join(workdir, "metrics.jsonl")).read()
  starts = open(os.path.join(workdir, environment.FILE)).read().splitlines()
  assert trainer.train_and_evaluate(config, workdir) == best
  assert open(os.path.join(workdir, "metrics.jsonl")).read() == before
  # Every start leaves a line saying what it ran on: the first start's line is kept.
  again = open(os.path.join(workdir, environment.FILE)).read().splitlines()
  assert len(again) == len(starts) + 1 and again[:-1] == starts


def test_environment_record_names_the_software_machine_and_data_digest(trained):
  config, workdir, _ = trained
  record = json.loads(open(os.path.join(workdir, environment.FILE)).readline())
  assert record["versions"]["jax"] == jax.__version__ and record["backend"] == jax.default_backend()
  assert record["cpu"]["logical_cpus"] == os.cpu_count()
  data = record["data"]
  records = {n for n in os.listdir(data["dir"]) if ".tfrecord" in n}
  assert any("-train.tfrecord" in n for n in records) and set(data["records_sha256"]) == records
  assert data == environment.data_digest(data["dir"])  # the digest of the very records training read


def test_workdir_with_another_model_is_refused(trained):
  config, workdir, _ = trained
  other = learning.TrainConfig(**{**config.__dict__, "model": "mlp"})
  with pytest.raises(UsageError, match="different setup.*model: 'cnn' there, 'mlp' now.*--overwrite"):
    trainer.train_and_evaluate(other, workdir)


def test_best_checkpoint_restores_and_evaluates_like_training_saw_it(trained):
  _, workdir, best = trained
  report = evaluate.evaluate_workdir(workdir, split="validation")
  assert report["step"] == best["step"]
  assert report["roc_auc"] == pytest.approx(best["roc_auc"], abs=1e-9)
  assert report["loss"] == pytest.approx(best["loss"], rel=1e-4)
  assert report["at_threshold_0.5"]["accuracy"] == pytest.approx(best["accuracy"])


def test_report_files_have_the_promised_shape(trained):
  _, workdir, _ = trained
  report = evaluate.evaluate_workdir(workdir, split="test")
  on_disk = json.load(open(os.path.join(workdir, "reports", "test.json")))
  assert on_disk == json.loads(json.dumps(report))
  assert report["num_examples"] == 60 and report["class_counts"] == {"NORMAL": 30, "PNEUMONIA": 30}
  for block in ("at_threshold_0.5", "at_chosen_threshold"):
    b = report[block]
    assert set(b) >= {"threshold", "accuracy", "sensitivity", "specificity", "precision", "f1",
                      "confusion_matrix"}
    (tn, fp), (fn, tp) = b["confusion_matrix"]
    assert tn + fp == 30 and fn + tp == 30
    assert b["accuracy"] == pytest.approx((tn + tp) / 60)
    assert b["sensitivity"] == pytest.approx(tp / 30) and b["specificity"] == pytest.approx(tn / 30)
  assert report["at_threshold_0.5"]["threshold"] == 0.5
  chosen = evaluate.restore_for_eval(workdir, "best")[2]["chosen_threshold"]
  assert report["at_chosen_threshold"]["threshold"] == pytest.approx(chosen)
  md = open(os.path.join(workdir, "reports", "test.md")).read()
  assert "ROC AUC" in md and "Confusion matrix" in md and "Youden" in md
  # The sample keeps Kermany's file names: each subgroup's rate, recounted from the predictions file.
  sub = report["subgroups"]
  assert list(sub) == ["bacteria", "virus", "NORMAL2-IM", "IM"] and "| virus | 7 (6) | sensitivity |" in md
  assert [sub[g]["num_examples"] for g in sub] == [23, 7, 22, 8]
  assert [sub[g]["rate"] for g in sub] == ["sensitivity", "sensitivity", "specificity", "specificity"]
  table = list(csv.DictReader(open(os.path.join(workdir, "reports", "test_predictions.csv"))))
  for g, r in sub.items():
    mine = [row for row in table if images.subgroup(row["file_name"]) == g]
    for block, column in (("at_threshold_0.5", "pred_at_0.5"), ("at_chosen_threshold", "pred_at_chosen")):
      assert r[block] == pytest.approx(np.mean([row[column] == row["label"] for row in mine]))
      assert r["ci95"][block][0] <= r[block] <= r["ci95"][block][1]
  rows = open(os.path.join(workdir, "reports", "test_predictions.csv")).read().splitlines()
  assert rows[0].startswith("file_name,patient_id,label,prob_pneumonia") and len(rows) == 61


def test_evaluate_any_folder_including_full_resolution_images(trained, tmp_path):
  from conftest import write_image, gradient_image
  _, workdir, _ = trained
  folder = tmp_path / "new_xrays"
  for cls, name in (("NORMAL", "IM-9000-0001.jpeg"), ("PNEUMONIA", "person9000_virus_1.png")):
    big = np.kron(gradient_image(), np.ones((40, 30), np.uint8))  # 1600 x 1440, like the originals
    write_image(str(folder / cls / name), big)
  write_image(str(folder / "NORMAL" / "rgb.png"), np.stack([gradient_image()] * 3, -1))
  (folder / "PNEUMONIA" / "corrupt.jpeg").write_bytes(b"\xff\xd8\xff garbage")
  report = evaluate.evaluate_workdir(workdir, image_dir=str(folder))
  assert report["name"] == "image_dir_new_xrays" and report["num_examples"] == 3
  assert [os.path.basename(s["path"]) for s in report["skipped_files"]] == ["corrupt.jpeg"]
  assert os.path.exists(os.path.join(workdir, "reports", "image_dir_new_xrays.md"))


def test_evaluate_needs_a_checkpoint(tmp_path):
  with pytest.raises(UsageError, match="not a training run's workdir"):
    evaluate.evaluate_workdir(str(tmp_path), split="test")


def test_divergence_stops_with_step_files_and_hint_and_keeps_the_last_checkpoint(prepared_sample, tmp_path):
  _, tfds_dir = prepared_sample
  # An absurd learning rate makes the MLP's logits overflow on its second step.
  config = learning.TrainConfig(model="mlp", data_dir=SAMPLE_DIR, tfds_data_dir=tfds_dir, image_size=32,
                               batch_size=16, num_steps=5, learning_rate=1e30, warmup_epochs=0,
                               checkpoint_every_steps=1)
  with pytest.raises(FloatingPointError, match=r"diverged at step 2: .*batch files: train/.*\.jpeg.*--learning_rate"):
    trainer.train_and_evaluate(config, str(tmp_path))
  assert sorted(int(s) for s in os.listdir(tmp_path / "checkpoints") if s.isdigit()) == [1]


def test_moving_average_run_checkpoints_evaluates_and_cannot_drop_it_on_resume(prepared_sample, tmp_path):
  _, tfds_dir = prepared_sample
  config = learning.TrainConfig(model="mlp", data_dir=SAMPLE_DIR, tfds_data_dir=tfds_dir, image_size=32,
                               batch_size=16, num_steps=4, ema_decay=0.9, checkpoint_every_steps=2)
  workdir = str(tmp_path)
  best = trainer.train_and_evaluate(config, workdir)
  # The average is in the checkpoint (real Orbax files) and is what evaluation scores.
  _, state, _ = evaluate.restore_for_eval(workdir, "best")
  assert state.ema is not None
  assert not np.array_equal(state.ema["params"]["Dense_0"]["kernel"], state.params["Dense_0"]["kernel"])
  report = evaluate.evaluate_workdir(workdir, split="validation")
  assert report["roc_auc"] == pytest.approx(best["roc_auc"], abs=1e-9)
  assert report["loss"] == pytest.approx(best["loss"], rel=1e-4)
  for decay in (0.0, 0.99):  # off: refused, with how to fix it; another decay: resumes
    other = dataclasses.replace(config, ema_decay=decay, num_steps=6)
    if decay == 0.0:
      with pytest.raises(UsageError, match=r"ema_decay: 0.9 there, 0.0 now.*--overwrite"):
        trainer.train_and_evaluate(other, workdir)
    else:
      assert trainer.train_and_evaluate(other, workdir)["step"] in (4, 6)


def test_final_rule_keeps_the_last_validated_checkpoint_even_when_worse(prepared_sample, tmp_path):
  _, tfds_dir = prepared_sample
  # A learning rate this high makes the later validations worse than the first one for this seed
  # (validation ROC AUC 0.59, 0.43, 0.48 on the sample's data version 1.1.0).
  config = learning.TrainConfig(model="mlp", data_dir=SAMPLE_DIR, tfds_data_dir=tfds_dir, image_size=32,
                               batch_size=16, num_epochs=3, learning_rate=0.3, warmup_epochs=0,
                               best_metric="final", seed=4)
  workdir = str(tmp_path)
  best = trainer.train_and_evaluate(config, workdir)
  lines = [json.loads(l) for l in open(os.path.join(workdir, "metrics.jsonl"))]
  assert len(lines) == 3 and best["step"] == lines[-1]["step"]
  assert best["roc_auc"] == pytest.approx(lines[-1]["val_roc_auc"], abs=1e-12)
  assert lines[-1]["val_roc_auc"] < max(l["val_roc_auc"] for l in lines)  # roc_auc would have kept another
  assert evaluate.evaluate_workdir(workdir, split="validation")["step"] == lines[-1]["step"]
  with pytest.raises(UsageError, match=r"--best_metric='last' must be one of roc_auc, loss, accuracy, final"):
    trainer.train_and_evaluate(dataclasses.replace(config, best_metric="last"), str(tmp_path / "other"))


def test_batch_larger_than_the_train_split_is_refused(prepared_sample, tmp_path):
  _, tfds_dir = prepared_sample
  config = learning.TrainConfig(model="mlp", data_dir=SAMPLE_DIR, tfds_data_dir=tfds_dir, batch_size=100_000)
  with pytest.raises(UsageError, match=r"--batch_size=100000 is larger than the train split \(\d+ images\)"):
    trainer.train_and_evaluate(config, str(tmp_path))


def test_predict_writes_probabilities_labels_and_maps(trained, tmp_path):
  from xray_jax import predict
  import shutil
  _, workdir, _ = trained
  folder = tmp_path / "incoming"
  shutil.copytree(os.path.join(SAMPLE_DIR, "val", "PNEUMONIA"), folder / "a")
  (folder / "a" / "broken.jpeg").write_bytes(b"\xff\xd8 broken")
  (folder / "notes.txt").write_text("x")
  records = predict.predict_files(workdir, [str(folder)], output_dir=str(tmp_path / "out"))
  good = [r for r in records if "error" not in r]
  bad = sorted(os.path.basename(r["file"]) for r in records if "error" in r)
  assert len(good) == 8 and bad == ["broken.jpeg", "notes.txt"]
  for r in good:
    assert 0.0 <= r["prob_pneumonia"] <= 1.0
    assert r["label"] == ("PNEUMONIA" if r["prob_pneumonia"] >= r["threshold"] else "NORMAL")
    assert r["saliency_method"] == "grad_cam" and os.path.getsize(r["saliency_map"]) > 0
  lines = open(tmp_path / "out" / "predictions.jsonl").read().splitlines()
  assert [json.loads(l) for l in lines] == records


def test_predict_labels_at_the_threshold_of_the_runs_own_rule(trained, tmp_path, caplog):
  """A run trained with --threshold_rule=stress: predict uses the threshold its reports use."""
  from xray_jax import predict
  import shutil
  workdir = str(tmp_path / "run")
  shutil.copytree(trained[1], workdir)
  # Other tests' validation-rule reports may have recorded that rule's threshold here: not this one's.
  config = json.load(open(os.path.join(workdir, "config.json")))
  json.dump({**config, "threshold_rule": "stress"}, open(os.path.join(workdir, "config.json"), "w"))
  image = os.path.join(SAMPLE_DIR, "val", "NORMAL", "NORMAL2-IM-1427-0001.jpeg")
  before = predict.predict_files(workdir, [image], output_dir=str(tmp_path / "a"), maps=False)[0]
  assert "no threshold of that rule is recorded" in caplog.text and "--split=validation" in caplog.text
  assert "stress" not in before["threshold_rule"]  # the checkpoint's validation-only choice, said so
  # The validation report on the run's own rule records its threshold; another rule's does not.
  report = evaluate.evaluate_workdir(workdir, split="validation", report_name="own_rule", bootstrap=10)
  evaluate.evaluate_workdir(workdir, split="validation", report_name="other_rule", threshold_rule="validation",
                            bootstrap=10)
  after = predict.predict_files(workdir, [image], output_dir=str(tmp_path / "b"), maps=False)[0]
  assert after["threshold"] == pytest.approx(report["at_chosen_threshold"]["threshold"])
  assert "stress shifts" in after["threshold_rule"] and after["threshold_rule"] == report["at_chosen_threshold"]["rule"]
  assert after["prob_pneumonia"] == before["prob_pneumonia"]
  recorded = json.load(open(os.path.join(workdir, evaluate.THRESHOLD_FILE)))
  assert recorded["best"]["step"] == after["checkpoint_step"] and recorded["best"]["rule_key"] == "stress"


def test_evaluate_reuses_the_recorded_stress_threshold_while_it_is_valid(trained, tmp_path):
  """A run's stress-rule threshold is chosen once; later reports read it instead of re-predicting
  validation under every shift, and a record of another shift set is not trusted."""
  import shutil
  workdir = str(tmp_path / "run")
  shutil.copytree(trained[1], workdir)
  config = json.load(open(os.path.join(workdir, "config.json")))
  json.dump({**config, "threshold_rule": "stress"}, open(os.path.join(workdir, "config.json"), "w"))
  path = os.path.join(workdir, evaluate.THRESHOLD_FILE)
  if os.path.exists(path):
    os.remove(path)
  first = evaluate.evaluate_workdir(workdir, split="validation", report_name="first", bootstrap=10)
  chosen = first["at_chosen_threshold"]["threshold"]
  assert "threshold" not in first["extra"]
  assert json.load(open(path))["best"]["shifts"] == list(evaluate.stress.SHIFTS)
  # Reused: the same threshold, said so, and the stress report's own pooled choice agrees with it.
  again = evaluate.evaluate_workdir(workdir, split="validation", report_name="again", stress_test=True, bootstrap=10)
  assert again["at_chosen_threshold"]["threshold"] == chosen
  assert again["at_chosen_threshold"]["rule"] == first["at_chosen_threshold"]["rule"]
  assert evaluate.THRESHOLD_FILE in again["extra"]["threshold"]
  assert again["stress"]["threshold_rules"]["stress_youden_all_shifts"] == pytest.approx(chosen)
  # The same checkpoint on the same split scores the same bits whichever way the threshold came.
  for key in ("loss", "weighted_loss", "roc_auc", "calibration"):
    assert again[key] == first[key], key
  # It really is read from the file: an edited value is what the next report uses.
  recorded = json.load(open(path))
  recorded["best"]["threshold"] = 0.25
  json.dump(recorded, open(path, "w"))
  assert evaluate.evaluate_workdir(workdir, split="test", report_name="edited",
                                   bootstrap=10)["at_chosen_threshold"]["threshold"] == 0.25
  # A record pooled over another shift set is stale: chosen afresh, and recorded again.
  recorded["best"]["shifts"] = ["blur"]
  json.dump(recorded, open(path, "w"))
  fresh = evaluate.evaluate_workdir(workdir, split="test", report_name="fresh", bootstrap=10)
  assert fresh["at_chosen_threshold"]["threshold"] == pytest.approx(chosen) and "threshold" not in fresh["extra"]
  assert json.load(open(path))["best"]["threshold"] == pytest.approx(chosen)


def test_predict_command_line_takes_files_and_no_maps(trained, tmp_path):
  import subprocess, sys
  from conftest import REPO
  _, workdir, _ = trained
  image = os.path.join(SAMPLE_DIR, "val", "NORMAL", "NORMAL2-IM-1427-0001.jpeg")
  r = subprocess.run([sys.executable, "-m", "xray_jax.predict", f"--workdir={workdir}", "--no_maps",
                      f"--output_dir={tmp_path}", image], cwd=REPO, capture_output=True, text=True, timeout=300,
                     env={**os.environ, "JAX_PLATFORMS": "cpu"})
  assert r.returncode == 0, r.stderr[-2000:]
  assert "P(pneumonia) = " in r.stdout
  (record,) = [json.loads(l) for l in open(tmp_path / "predictions.jsonl")]
  assert record["file"] == image and "saliency_map" not in record


def test_evaluate_adds_a_page_of_saliency_for_the_most_confident_mistakes(trained):
  _, workdir, _ = trained
  report = evaluate.evaluate_workdir(workdir, split="test", report_name="test_with_maps", mistake_maps=4)
  mistakes = report["at_chosen_threshold"]["confusion_matrix"][0][1] + report["at_chosen_threshold"]["confusion_matrix"][1][0]
  if mistakes == 0:
    assert report["mistake_maps"] is None
  else:
    assert len(report["mistake_maps"]["files"]) == min(4, mistakes)
    assert os.path.getsize(os.path.join(workdir, "reports", "test_with_maps_mistakes.png")) > 0
    assert "test_with_maps_mistakes.png" in open(os.path.join(workdir, "reports", "test_with_maps.md")).read()


def test_evaluate_reports_figures_intervals_calibration_and_links_them(trained):
  _, workdir, _ = trained
  report = evaluate.evaluate_workdir(workdir, split="test", report_name="test_full", bootstrap=200)
  lo, hi = report["roc_auc_ci95"]
  assert lo <= report["roc_auc"] <= hi and report["bootstrap"]["unit"] == "patient"
  for block in ("at_threshold_0.5", "at_chosen_threshold"):
    for key in ("accuracy", "sensitivity", "specificity"):
      lo, hi = report[block]["ci95"][key]
      assert lo <= report[block][key] <= hi, (block, key)
  assert 0.0 <= report["calibration"]["ece"] <= 1.0 and sum(report["calibration"]["count"]) == 60
  md = open(os.path.join(workdir, "reports", "test_full.md")).read()
  for kind in ("roc", "pr", "reliability", "confusion"):
    png = os.path.join(workdir, "reports", f"test_full_{kind}.png")
    assert os.path.getsize(png) > 0 and f"(test_full_{kind}.png)" in md
  assert "(training_curves.png)" in md and os.path.exists(os.path.join(workdir, "reports", "training_curves.png"))


def test_evaluate_options_ensemble_tta_temperature_label_shift_and_stress(trained):
  _, workdir, _ = trained
  plain = evaluate.evaluate_workdir(workdir, split="test", report_name="t_plain", bootstrap=10)
  # An ensemble of a run with itself is the run: same probabilities, same AUC.
  twice = evaluate.evaluate_workdir(workdir, split="test", report_name="t_twice", ensemble=[workdir], bootstrap=10)
  assert twice["roc_auc"] == pytest.approx(plain["roc_auc"], abs=1e-12)
  assert "mean of 2 runs" in twice["at_chosen_threshold"]["rule"]
  tta = evaluate.evaluate_workdir(workdir, split="test", report_name="t_tta", tta=True, temperature_scaling=True,
                                  label_shift="em", stress_test=True, bootstrap=10)
  plain_probs = _csv_probs(workdir, "t_plain")
  tta_probs = _csv_probs(workdir, "t_tta")
  assert not np.allclose(plain_probs, tta_probs)  # TTA and temperature change the probabilities
  assert "temperature" in tta["extra"] and "test-time augmentation" in tta["extra"]["predictions"]
  ls = tta["label_shift"]
  assert ls["source_prior"] == pytest.approx(0.5)  # class-weighted training: a balanced prior
  assert 0.0 < ls["estimated_prior"] < 1.0 and 0.0 < ls["threshold"] < 1.0
  assert set(tta["stress"]["shifts"]) == set(evaluate.stress.SHIFTS)
  assert tta["stress"]["worst"]["roc_auc"] <= tta["stress"]["mean"]["roc_auc"]
  assert set(tta["stress"]["threshold_rules"]["em_per_shift"]["shifts"]) == set(evaluate.stress.SHIFTS)
  md = open(os.path.join(workdir, "reports", "t_tta.md")).read()
  assert "Stress test" in md and "Label-shift EM on each shifted set" in md


def test_evaluate_with_batch_norm_adapted_to_each_evaluated_set(trained):
  _, workdir, _ = trained
  plain = evaluate.evaluate_workdir(workdir, split="validation", report_name="v_plain_bn", stress_test=True,
                                    threshold_rule="stress", bootstrap=10)
  adapted = evaluate.evaluate_workdir(workdir, split="validation", report_name="v_adapt", adapt_bn=True,
                                      stress_test=True, threshold_rule="stress", bootstrap=10)
  assert "BatchNorm statistics re-estimated" in adapted["extra"]["predictions"]
  assert "BatchNorm statistics re-estimated" in adapted["at_chosen_threshold"]["rule"]
  assert not np.allclose(_csv_probs(workdir, "v_plain_bn"), _csv_probs(workdir, "v_adapt"))
  # Each shifted copy is predicted with statistics of its own, and the threshold is chosen on those.
  for shift in evaluate.stress.SHIFTS:
    assert adapted["stress"]["shifts"][shift]["loss"] != pytest.approx(plain["stress"]["shifts"][shift]["loss"])
  assert adapted["at_chosen_threshold"]["threshold"] != pytest.approx(plain["at_chosen_threshold"]["threshold"])
  with pytest.raises(UsageError, match="--adapt_bn_prior=4.0 does nothing without --adapt_bn"):
    evaluate.evaluate_workdir(workdir, split="test", adapt_bn_prior=4.0)


def _csv_probs(workdir: str, name: str) -> np.ndarray:
  rows = open(os.path.join(workdir, "reports", f"{name}_predictions.csv")).read().splitlines()[1:]
  return np.array([float(r.split(",")[3]) for r in rows])


def test_ensemble_of_runs_with_different_image_sizes_is_refused(trained, prepared_sample, tmp_path):
  _, tfds_dir = prepared_sample
  config, workdir, _ = trained
  other = learning.TrainConfig(model="cnn", data_dir=SAMPLE_DIR, tfds_data_dir=tfds_dir, image_size=32,
                              batch_size=32, num_steps=1)
  trainer.train_and_evaluate(other, str(tmp_path))
  with pytest.raises(UsageError, match="an ensemble needs one image size"):
    evaluate.evaluate_workdir(workdir, split="test", ensemble=[str(tmp_path)])


def test_a_run_on_another_version_of_the_split_is_not_scored_on_validation_nor_resumed(trained, tmp_path):
  """Version 1.0.0 of the prepared data split some children's films between train and validation;
  a run trained on it must not be scored on, or resumed over, the 1.1.0 split."""
  import shutil
  config, _, _ = trained
  workdir = str(tmp_path / "run")
  shutil.copytree(trained[1], workdir)
  path = os.path.join(workdir, "environment.jsonl")
  last = [json.loads(l) for l in open(path)][-1]
  assert os.path.basename(last["data"]["dir"]) == "1.1.0"
  old_dir = os.path.join(os.path.dirname(last["data"]["dir"]), "1.0.0")
  with open(path, "a") as f:
    f.write(json.dumps({**last, "data": {**last["data"], "dir": old_dir}}) + "\n")
  refused = "trained on version 1.0.0 of the prepared data.*not that of the prepared 1.1.0"
  with pytest.raises(UsageError, match=refused + ".*reading its validation split"):
    evaluate.evaluate_workdir(workdir, split="validation", bootstrap=10)
  with pytest.raises(UsageError, match=refused + ".*reading its validation split"):  # also as an ensemble member
    evaluate.evaluate_workdir(trained[1], split="validation", ensemble=[workdir], bootstrap=10)
  # Kaggle test/ is not carved from train/, and this run's threshold needs no validation images.
  assert evaluate.evaluate_workdir(workdir, split="test", bootstrap=10)["num_examples"] == 60
  with pytest.raises(UsageError, match=refused + ".*resuming it.*--overwrite"):
    trainer.train_and_evaluate(config, workdir)


def test_stress_threshold_rule_pools_validation_with_its_shifts(trained):
  _, workdir, _ = trained
  report = evaluate.evaluate_workdir(workdir, split="validation", report_name="v_stress_rule", stress_test=True,
                                     threshold_rule="stress", bootstrap=10)
  assert "stress shifts" in report["at_chosen_threshold"]["rule"]
  # The same pooled choice, made independently inside the stress report.
  assert report["at_chosen_threshold"]["threshold"] == pytest.approx(
      report["stress"]["threshold_rules"]["stress_youden_all_shifts"])
  left_out = report["stress"]["threshold_rules"]["stress_youden_left_out"]
  assert set(left_out["thresholds"]) == set(evaluate.stress.SHIFTS)
  # Per shift, a class's subgroups, weighted by their sizes, make up its sensitivity or specificity.
  sub, sizes = report["stress"]["subgroups"], {g: r["num_examples"] for g, r in report["subgroups"].items()}
  for shift, row in report["stress"]["shifts"].items():
    for rate, groups in (("sensitivity", ("bacteria", "virus")), ("specificity", ("NORMAL2-IM", "IM"))):
      groups = [g for g in groups if g in sizes]
      assert sum(sizes[g] * sub["shifts"][shift][g] for g in groups) / sum(sizes[g] for g in groups) == \
          pytest.approx(row[rate])
  for g in sizes:
    assert sub["shifts"][sub["worst_shift"][g]][g] == sub["worst"][g] <= sub["mean"][g]
  # The unseen shifts are scored at the same threshold: the rule still pools only the standard shifts.
  unseen = evaluate.evaluate_workdir(workdir, split="validation", report_name="v_unseen", stress_test=True,
                                     stress_set="unseen", threshold_rule="stress", bootstrap=10)
  assert unseen["stress"]["set"] == "unseen" and set(unseen["stress"]["shifts"]) == set(evaluate.stress.UNSEEN_SHIFTS)
  assert unseen["at_chosen_threshold"]["threshold"] == report["at_chosen_threshold"]["threshold"]
  assert "the unseen set" in open(os.path.join(workdir, "reports", "v_unseen.md")).read()
  with pytest.raises(UsageError, match="--stress_set=severe: choose one of standard, unseen"):
    evaluate.evaluate_workdir(workdir, split="validation", stress_test=True, stress_set="severe")
  with pytest.raises(UsageError, match="choose one of validation, stress"):
    evaluate.evaluate_workdir(workdir, split="test", threshold_rule="median")
