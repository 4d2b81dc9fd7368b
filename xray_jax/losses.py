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


def weighted_softmax_xent(*, logits: jnp.ndarray, labels: jnp.ndarray, class_weights: jnp.ndarray,
                          mask: jnp.ndarray | None = None, label_smoothing: float = 0.0) -> jnp.ndarray:
  """Mean over (unmasked) examples of class_weight[label] * cross-entropy.

  Divides by the number of examples, not by the sum of weights, as Keras' sample
  weights do, so the weights change the balance between classes, not the step size.
  """
  num_classes = logits.shape[-1]
  targets = jax.nn.one_hot(labels, num_classes)
  if label_smoothing:
    targets = optax.smooth_labels(targets, label_smoothing)
  per_example = optax.softmax_cross_entropy(logits, targets) * class_weights[labels]
  if mask is None:
    return jnp.mean(per_example)
  mask = mask.astype(per_example.dtype)
  return jnp.sum(per_example * mask) / jnp.maximum(jnp.sum(mask), 1.0)

