"""Losses and class weights."""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax


def class_weights(counts: Sequence[int]) -> np.ndarray:
  """Inverse-frequency weights n / (k * n_c): each class carries equal total weight.

  For Kaggle train/ (1341 NORMAL, 3875 PNEUMONIA) this gives 1.94 and 0.67, the weights
  of the original Keras project.
  """
  counts = np.asarray(counts, dtype=np.float64)
  if (counts <= 0).any():
    raise ValueError(f"Every class needs training examples to weight it; class counts are {counts.tolist()}.")
  return (counts.sum() / (len(counts) * counts)).astype(np.float32)


def _weighted_xent(logits: jnp.ndarray, labels: jnp.ndarray, class_weights: jnp.ndarray,
                   label_smoothing: float) -> jnp.ndarray:
  targets = jax.nn.one_hot(labels, logits.shape[-1])
  if label_smoothing:
    targets = optax.smooth_labels(targets, label_smoothing)
  return optax.softmax_cross_entropy(logits, targets) * class_weights[labels]


def weighted_softmax_xent(*, logits: jnp.ndarray, labels: jnp.ndarray, class_weights: jnp.ndarray,
                          mask: jnp.ndarray | None = None, label_smoothing: float = 0.0,
                          mixup: tuple[jnp.ndarray, jnp.ndarray] | None = None) -> jnp.ndarray:
  """Mean over (unmasked) examples of class_weight[label] * cross-entropy.

  Divides by the number of examples, not by the sum of weights, as Keras' sample
  weights do, so the weights change the balance between classes, not the step size.
  `mixup=(partner_labels, lam)` scores images blended by augment.mixup: lam times the
  loss of `labels` plus (1 - lam) times that of the partner's, each with its class weight.
  """
  per_example = _weighted_xent(logits, labels, class_weights, label_smoothing)
  if mixup is not None:
    partner_labels, lam = mixup
    per_example = lam * per_example + (1.0 - lam) * _weighted_xent(logits, partner_labels, class_weights,
                                                                   label_smoothing)
  if mask is None:
    return jnp.mean(per_example)
  mask = mask.astype(per_example.dtype)
  return jnp.sum(per_example * mask) / jnp.maximum(jnp.sum(mask), 1.0)
