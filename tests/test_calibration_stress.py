"""Temperature scaling, label-shift EM and the stress-validation shifts, on generated data."""

import numpy as np
import pytest
import tensorflow as tf

from conftest import gradient_image
from xray_jax import calibration
from xray_jax import stress


def _scores(n, prior, seed=0):
  """Labels with P(1) = prior and the exact posterior under a balanced prior (two unit Gaussians)."""
  rng = np.random.default_rng(seed)
  y = rng.random(n) < prior
  z = np.where(y, 1.0, -1.0) + rng.normal(size=n)
  return y.astype(int), calibration.sigmoid(2.0 * z)  # log-likelihood ratio of N(1,1) vs N(-1,1) is 2z


@pytest.mark.parametrize("prior", [0.3, 0.5, 0.74])
def test_em_recovers_the_class_prior_from_unlabeled_posteriors(prior):
  labels, probs = _scores(20000, prior)
  estimate, iterations = calibration.em_prior(probs, source_prior=0.5)
  assert estimate == pytest.approx(labels.mean(), abs=0.015) and iterations < 1000
  # The naive estimate (mean posterior) is biased towards the training prior; EM is not.
  if prior != 0.5:
    assert abs(estimate - labels.mean()) < abs(probs.mean() - labels.mean())


def test_prior_adjustment_and_threshold():
  p = np.array([0.1, 0.5, 0.9])
  np.testing.assert_allclose(calibration.adjust_prior(p, 0.5, 0.5), p)
  back = calibration.adjust_prior(calibration.adjust_prior(p, 0.5, 0.8), 0.8, 0.5)
  np.testing.assert_allclose(back, p, rtol=1e-9)
  assert calibration.prior_threshold(0.5, 0.5) == pytest.approx(0.5)
  t = calibration.prior_threshold(0.5, 0.8)  # more positives expected: call positive more readily
  assert t < 0.5 and calibration.adjust_prior(np.array([t]), 0.5, 0.8)[0] == pytest.approx(0.5)
  assert calibration.effective_prior([1207, 3485], [1.9437, 0.6732]) == pytest.approx(0.5, abs=1e-4)


@pytest.mark.parametrize("true_t", [0.5, 2.0])
def test_temperature_scaling_recovers_a_known_temperature(true_t):
  labels, probs = _scores(20000, 0.5, seed=1)
  distorted = calibration.apply_temperature(probs, 1.0 / true_t)  # sharpen (or soften) well-calibrated scores
  assert calibration.fit_temperature(labels, distorted) == pytest.approx(true_t, rel=0.05)


def test_temperature_one_leaves_every_probability_as_it_was():
  # Scores saturate in float32 (0 and 1 occur) and sit near 1; a logit-sigmoid round trip would move them.
  probs = np.concatenate([[0.0, 1.0], np.random.default_rng(2).random(2000) ** 0.01]).astype(np.float32)
  kept = calibration.apply_temperature(probs, 1.0)
  assert kept.dtype == np.float64 and np.array_equal(kept, probs.astype(np.float64))
  assert not np.array_equal(calibration.sigmoid(calibration.logit(probs)), kept)  # what T = 1 no longer does
  assert calibration.apply_temperature(probs, 2.0)[1] < 1.0  # any other T still maps through the logit


def _dataset(names=(b"a.jpeg", b"b.jpeg")):
  texture = np.random.default_rng(3).integers(0, 60, (64, 64), dtype=np.uint8)  # detail for blur to remove
  img = np.stack([gradient_image(64, 64, seed=3) // 2 + texture], -1)
  return tf.data.Dataset.from_tensor_slices({
      "image": np.stack([img] * len(names)), "label": np.zeros(len(names), np.int32),
      "file_name": np.array(names)})


def test_shift_sets_have_distinct_names_and_unseen_is_not_what_the_threshold_rule_sees():
  assert not set(stress.SHIFTS) & set(stress.UNSEEN_SHIFTS)
  assert stress.SHIFT_SETS["standard"] is stress.SHIFTS  # the stress threshold rule's set, unchanged


@pytest.mark.parametrize("shift", sorted([*stress.SHIFTS, *stress.UNSEEN_SHIFTS]))
def test_every_shift_is_deterministic_changes_the_image_and_keeps_its_shape(shift):
  ds = _dataset()
  first = [e["image"] for e in stress.apply(ds, shift).as_numpy_iterator()]
  again = [e["image"] for e in stress.apply(ds, shift).as_numpy_iterator()]
  original = [e["image"] for e in ds.as_numpy_iterator()]
  assert stress.apply(ds, shift).element_spec["image"].shape == ds.element_spec["image"].shape
  for a, b, o in zip(first, again, original):
    assert a.dtype == np.uint8 and a.shape == o.shape
    np.testing.assert_array_equal(a, b)
    assert np.abs(a.astype(int) - o).mean() > 0.5, shift
  if shift == "noise":  # seeded by file name: two files get different noise
    assert not np.array_equal(first[0], first[1])


def _apply_one(fn, image_u8):
  x = tf.constant(image_u8[..., None], tf.float32) / 255.0
  return np.asarray(fn(x, tf.constant(0)))[..., 0]


def test_unseen_shifts_do_what_their_names_say():
  ramp = np.tile(np.linspace(10, 240, 48), (48, 1)).astype(np.uint8)  # brightness rises to the right
  marked = ramp.copy()
  marked[5:9, 2:6] = 255
  # A 90-degree rotation with the same transform is np.rot90: counter-clockwise on screen, about the centre.
  np.testing.assert_allclose(_apply_one(stress._rotate(90.0), marked) * 255, np.rot90(marked), atol=1e-3)
  # Equalisation keeps the order of grey levels and spreads them over the whole range.
  eq = _apply_one(stress.UNSEEN_SHIFTS["equalize"], ramp)
  assert eq.min() == 0.0 and eq.max() == pytest.approx(1.0) and np.all(np.diff(eq[0]) >= 0)
  heel = _apply_one(stress.UNSEEN_SHIFTS["heel_effect"], np.full((48, 48), 100, np.uint8))
  assert heel[0, 0] == pytest.approx(1.25 * 100 / 255) and heel[-1, 0] == pytest.approx(0.75 * 100 / 255)
  col = _apply_one(stress.UNSEEN_SHIFTS["collimation"], ramp)
  assert col[0, 24] == col[24, 0] == col[24, -1] == col[-1, 24] == pytest.approx(0.95)  # white bands
  np.testing.assert_allclose(col[10:38, 10:38], ramp[10:38, 10:38] / 255.0)  # the chest is untouched
  post = _apply_one(stress.UNSEEN_SHIFTS["posterize_16"], ramp)
  assert len(np.unique(post)) <= 16


def test_stress_report_runs_em_on_each_shift_and_a_shift_that_inflates_scores_inflates_the_estimate():
  from xray_jax import evaluate, trainer  # pylint: disable=g-import-not-at-top
  y, p = _scores(4000, 0.6, seed=3)
  unshifted = trainer.Predictions(labels=y, probs=p, file_names=[f"{i}.png" for i in range(len(y))])
  inflated = calibration.sigmoid(calibration.logit(p) + 1.5)  # every film looks more like PNEUMONIA
  shifted = {"none": p, "inflated": inflated}
  report = evaluate.stress_report(unshifted, shifted, threshold=0.5, source_prior=0.5)
  em = report["threshold_rules"]["em_per_shift"]
  assert em["observed_prior"] == pytest.approx(np.mean(y))
  assert em["shifts"]["none"]["estimated_prior"] == pytest.approx(calibration.em_prior(p, 0.5)[0])
  assert abs(em["shifts"]["none"]["estimated_prior"] - 0.6) < 0.03  # pure label shift: EM recovers the share
  assert em["shifts"]["inflated"]["estimated_prior"] > 0.75  # covariate shift read as more PNEUMONIA
  assert em["shifts"]["inflated"]["specificity"] < em["shifts"]["none"]["specificity"]
  assert em["mean"]["estimated_prior"] == pytest.approx(np.mean([r["estimated_prior"] for r in em["shifts"].values()]))
  assert "em_per_shift" not in evaluate.stress_report(unshifted, shifted, threshold=0.5)["threshold_rules"]
