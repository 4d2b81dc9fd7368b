"""Post-hoc probability fixes: temperature scaling and label-shift (class prior) correction.

Both work on P(PNEUMONIA) from a trained model, on the host, without retraining.

Temperature scaling (Guo et al. 2017) divides the logit by one T > 0 fitted on
validation; it changes confidence, never the ranking, so ROC AUC is unchanged.

Label shift (Saerens, Latinne and Decaestecker 2002): if only the class prior differs
between training and deployment, p_t(y|x) is proportional to p_s(y|x) pi_t(y) / pi_s(y),
and the unknown deployment prior pi_t can be estimated from unlabeled inputs by EM.
A class-weighted loss (weights proportional to 1 / class count) makes the model's
posteriors those of a balanced prior, so pi_s is the weighted class mass, 0.5 here.
"""

from __future__ import annotations

import numpy as np

_EPS = 1e-7


def logit(p: np.ndarray) -> np.ndarray:
  p = np.clip(np.asarray(p, np.float64), _EPS, 1.0 - _EPS)
  return np.log(p) - np.log1p(-p)


def sigmoid(z: np.ndarray) -> np.ndarray:
  return 1.0 / (1.0 + np.exp(-np.asarray(z, np.float64)))


def apply_temperature(probs: np.ndarray, temperature: float) -> np.ndarray:
  if temperature == 1.0:  # the identity, exactly: a logit-sigmoid round trip moves the last bits and clips 0 and 1
    return np.asarray(probs, np.float64)
  return sigmoid(logit(probs) / temperature)


def fit_temperature(labels: np.ndarray, probs: np.ndarray) -> float:
  """The T minimising the mean cross-entropy of sigmoid(logit / T), by golden-section search
  on log T in [-4, 4] (the loss is unimodal in 1 / T)."""
  labels = np.asarray(labels, np.float64)
  z = logit(probs)

  def nll(log_t: float) -> float:
    q = np.clip(sigmoid(z / np.exp(log_t)), 1e-12, 1.0 - 1e-12)
    return float(-np.mean(labels * np.log(q) + (1.0 - labels) * np.log1p(-q)))

  lo, hi = -4.0, 4.0
  golden = (np.sqrt(5.0) - 1.0) / 2.0
  a, b = hi - golden * (hi - lo), lo + golden * (hi - lo)
  fa, fb = nll(a), nll(b)
  for _ in range(80):  # interval shrinks by 0.618 each time: far below float resolution
    if fa < fb:
      hi, b, fb = b, a, fa
      a = hi - golden * (hi - lo)
      fa = nll(a)
    else:
      lo, a, fa = a, b, fb
      b = lo + golden * (hi - lo)
      fb = nll(b)
  return float(np.exp((lo + hi) / 2.0))


def effective_prior(class_counts: np.ndarray, class_weights: np.ndarray) -> float:
  """P(PNEUMONIA) that a loss with these per-class weights trains the posteriors for."""
  mass = np.asarray(class_counts, np.float64) * np.asarray(class_weights, np.float64)
  return float(mass[1] / mass.sum())


def adjust_prior(probs: np.ndarray, source_prior: float, target_prior: float) -> np.ndarray:
  """Posteriors under `target_prior` from posteriors under `source_prior` (P(PNEUMONIA))."""
  shift = logit(target_prior) - logit(source_prior)
  return sigmoid(logit(probs) + shift)


def em_prior(probs: np.ndarray, source_prior: float, *, max_iter: int = 1000,
             tol: float = 1e-8) -> tuple[float, int]:
  """EM estimate of the deployment P(PNEUMONIA) from unlabeled posteriors; (prior, iterations).

  E-step: adjust the posteriors to the current prior; M-step: the prior is their mean.
  """
  prior = source_prior
  for i in range(1, max_iter + 1):
    new = float(np.mean(adjust_prior(probs, source_prior, prior)))
    new = min(max(new, _EPS), 1.0 - _EPS)
    if abs(new - prior) < tol:
      return new, i
    prior = new
  return prior, max_iter


def prior_threshold(source_prior: float, target_prior: float) -> float:
  """Threshold on the model's probability equal to 0.5 on the prior-adjusted posterior:
  the minimum-error decision under `target_prior`."""
  return float(sigmoid(logit(source_prior) - logit(target_prior)))
