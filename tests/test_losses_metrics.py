import itertools

import jax.numpy as jnp
import numpy as np
import optax
import pytest

from xray_jax import losses
from xray_jax import metrics


def test_class_weights_of_kaggle_train_are_the_seed_projects():
  w = losses.class_weights([1341, 3875])
  np.testing.assert_allclose(w, [5216 / (2 * 1341), 5216 / (2 * 3875)], rtol=1e-6)
  assert [round(float(x), 2) for x in w] == [1.94, 0.67]
  # Each class carries the same total weight.
  assert w[0] * 1341 == pytest.approx(w[1] * 3875)


def test_class_weights_refuse_an_empty_class():
  with pytest.raises(ValueError, match="Every class needs training examples"):
    losses.class_weights([10, 0])


def test_weighted_xent_matches_a_hand_computation():
  logits = jnp.array([[2.0, -1.0], [0.5, 0.5], [-3.0, 1.0]])
  labels = jnp.array([0, 1, 1])
  w = jnp.array([2.0, 0.5])
  p = np.exp(np.asarray(logits)) / np.exp(np.asarray(logits)).sum(1, keepdims=True)
  expected = np.mean([-2.0 * np.log(p[0, 0]), -0.5 * np.log(p[1, 1]), -0.5 * np.log(p[2, 1])])
  got = losses.weighted_softmax_xent(logits=logits, labels=labels, class_weights=w)
  assert float(got) == pytest.approx(expected, rel=1e-6)
  masked = losses.weighted_softmax_xent(logits=logits, labels=labels, class_weights=w,
                                        mask=jnp.array([1, 0, 0]))
  assert float(masked) == pytest.approx(-2.0 * np.log(p[0, 0]), rel=1e-6)
  unweighted = losses.weighted_softmax_xent(logits=logits, labels=labels, class_weights=jnp.ones(2))
  assert float(unweighted) == pytest.approx(float(optax.softmax_cross_entropy_with_integer_labels(
      logits, labels).mean()), rel=1e-6)


def _auc_by_pairs(labels, scores):
  pos = [s for s, l in zip(scores, labels) if l]
  neg = [s for s, l in zip(scores, labels) if not l]
  wins = sum(1.0 if p > n else 0.5 if p == n else 0.0 for p, n in itertools.product(pos, neg))
  return wins / (len(pos) * len(neg))


@pytest.mark.parametrize("seed", range(5))
def test_roc_auc_equals_the_pairwise_definition_with_ties(seed):
  rng = np.random.default_rng(seed)
  labels = rng.integers(0, 2, 60)
  scores = np.round(rng.random(60), 1)  # many ties
  assert metrics.roc_auc(labels, scores) == pytest.approx(_auc_by_pairs(labels, scores))


def test_roc_auc_is_nan_with_one_class():
  assert np.isnan(metrics.roc_auc(np.ones(5), np.linspace(0, 1, 5)))


def test_at_threshold_confusion_matrix_and_rates():
  labels = np.array([0, 0, 0, 1, 1, 1, 1])
  probs = np.array([0.1, 0.6, 0.4, 0.9, 0.5, 0.2, 0.7])
  m = metrics.at_threshold(labels, probs, 0.5)
  assert m["confusion_matrix"] == [[2, 1], [1, 3]]  # [[tn, fp], [fn, tp]]; 0.5 itself counts positive
  assert m["sensitivity"] == pytest.approx(3 / 4) and m["specificity"] == pytest.approx(2 / 3)
  assert m["precision"] == pytest.approx(3 / 4) and m["accuracy"] == pytest.approx(5 / 7)
  assert m["f1"] == pytest.approx(2 * 3 / (2 * 3 + 1 + 1))


def test_youden_threshold_maximises_j_by_brute_force():
  rng = np.random.default_rng(3)
  labels = rng.integers(0, 2, 200)
  probs = np.clip(rng.normal(0.35 + 0.3 * labels, 0.2), 0, 1)
  t = metrics.youden_threshold(labels, probs)
  j = lambda t: (lambda m: m["sensitivity"] + m["specificity"] - 1)(metrics.at_threshold(labels, probs, t))
  best_j = max(j(x) for x in np.unique(probs))
  assert j(t) == pytest.approx(best_j)
  assert not np.any(probs == t)  # the cut falls between examples


@pytest.mark.parametrize("seed", range(3))
def test_roc_curve_area_is_roc_auc_and_points_match_at_threshold(seed):
  rng = np.random.default_rng(seed)
  labels = rng.integers(0, 2, 80)
  probs = np.round(rng.random(80), 1)  # many ties
  fpr, tpr, thresholds = metrics.roc_curve(labels, probs)
  assert np.trapezoid(tpr, fpr) == pytest.approx(metrics.roc_auc(labels, probs))
  for f, t, th in list(zip(fpr, tpr, thresholds))[1:]:
    at = metrics.at_threshold(labels, probs, th)
    assert t == pytest.approx(at["sensitivity"]) and f == pytest.approx(1 - at["specificity"])


def test_average_precision_by_hand():
  labels = np.array([1, 0, 1, 0])
  probs = np.array([0.9, 0.8, 0.7, 0.1])
  # Ranked: +, -, +, -: precision 1 at recall 1/2, 2/3 at recall 1.
  assert metrics.average_precision(labels, probs) == pytest.approx(0.5 * 1 + 0.5 * 2 / 3)
  assert metrics.average_precision(np.array([1, 1, 0]), np.array([0.9, 0.8, 0.1])) == pytest.approx(1.0)


def test_calibration_bins_and_ece():
  rng = np.random.default_rng(0)
  probs = rng.random(200000)
  calibrated = (rng.random(200000) < probs).astype(int)
  assert metrics.calibration_bins(calibrated, probs)["ece"] < 0.01
  # Always saying 0.9 for a coin flip is off by 0.4.
  cal = metrics.calibration_bins(np.array([0, 1] * 50), np.full(100, 0.9))
  assert cal["ece"] == pytest.approx(0.4) and cal["count"][9] == 100


def test_bootstrap_by_patient_is_wider_than_by_image_when_patients_repeat():
  rng = np.random.default_rng(0)
  n_patients = 40
  labels = np.repeat(rng.integers(0, 2, n_patients), 5)  # 5 images per patient, one label each
  probs = np.clip(np.repeat(rng.random(n_patients), 5) * 0.5 + labels * 0.3, 0, 1)  # per-patient scores
  groups = [f"person{i // 5}" for i in range(len(labels))]
  by_image = metrics.bootstrap_intervals(labels, probs, 0.5, num_samples=300)
  by_patient = metrics.bootstrap_intervals(labels, probs, 0.5, groups=groups, num_samples=300)
  width = lambda ci, k: ci[k][1] - ci[k][0]
  assert width(by_patient, "accuracy") > 1.5 * width(by_image, "accuracy")
  point = metrics.at_threshold(labels, probs, 0.5)["accuracy"]
  assert by_patient["accuracy"][0] <= point <= by_patient["accuracy"][1]


def test_subgroup_rates_by_hand_and_intervals_resample_patients():
  # Two PNEUMONIA subgroups and one NORMAL; "virus" has 2 patients of 3 images each, one found, one missed.
  labels = np.array([1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0, 1])
  probs = np.array([.9, .8, .7, .2, .3, .1, .6, .4, .1, .2, .7, .9])
  subs = ["virus"] * 6 + ["bacteria"] * 2 + ["IM"] * 3 + [None]
  patients = ["p1"] * 3 + ["p2"] * 3 + ["p3", "p4", "n1", "n2", "n3", "x"]
  r = metrics.subgroup_rates(labels, probs, subs, {"half": 0.5, "low": 0.15}, groups=patients, num_samples=400)
  assert set(r) == {"virus", "bacteria", "IM"}  # no entry for unnamed files
  assert r["virus"]["rate"] == "sensitivity" and r["IM"]["rate"] == "specificity"
  assert (r["virus"]["num_examples"], r["virus"]["num_patients"]) == (6, 2)
  assert r["virus"]["half"] == pytest.approx(0.5) and r["virus"]["low"] == pytest.approx(5 / 6)
  assert r["bacteria"]["half"] == pytest.approx(0.5) and r["IM"]["half"] == pytest.approx(2 / 3)
  # Against all 3 NORMAL images: virus ranks 0.9, 0.8 above all, 0.3, 0.2 (tie), 0.1 (tie) below some.
  assert r["virus"]["roc_auc_vs_other_class"] == pytest.approx(metrics.roc_auc(
      np.r_[np.ones(6), np.zeros(3)], np.r_[probs[:6], probs[8:11]]))
  # Resampling the two patients gives 0, 1/2 or 1 at 0.5; by image it would take values in between.
  lo, hi = r["virus"]["ci95"]["half"]
  assert (lo, hi) == (0.0, 1.0)
  one_class_mixed = metrics.subgroup_rates(np.array([0, 1]), np.array([.2, .8]), ["IM", "IM"], {"t": 0.5})
  assert one_class_mixed["IM"]["rate"] == "accuracy" and "roc_auc_vs_other_class" not in one_class_mixed["IM"]


def test_mixup_xent_is_the_lam_weighted_sum_of_both_labels_weighted_losses():
  logits = jnp.array([[2.0, -1.0], [0.5, 0.5], [-3.0, 1.0]])
  labels, partner = jnp.array([0, 1, 1]), jnp.array([1, 1, 0])
  lam, w = jnp.array([0.9, 0.6, 0.5]), jnp.array([2.0, 0.5])
  logp = np.log(np.exp(np.asarray(logits)) / np.exp(np.asarray(logits)).sum(1, keepdims=True))
  expected = np.mean([lam[i] * -w[labels[i]] * logp[i, labels[i]] + (1 - lam[i]) * -w[partner[i]] * logp[i, partner[i]]
                      for i in range(3)])
  got = losses.weighted_softmax_xent(logits=logits, labels=labels, class_weights=w, mixup=(partner, lam))
  assert float(got) == pytest.approx(float(expected), rel=1e-6)
  plain = losses.weighted_softmax_xent(logits=logits, labels=labels, class_weights=w)
  same = losses.weighted_softmax_xent(logits=logits, labels=labels, class_weights=w, mixup=(partner, jnp.ones(3)))
  assert float(same) == pytest.approx(float(plain), rel=1e-6)
