"""The cnn with GroupNorm in place of BatchNorm: every image normalised by its own activations.

BatchNorm evaluates with running statistics of the training images, so films that are
darker, flatter or sharper than those (the test split's shift) reach every layer off
centre. GroupNorm (Wu & He 2018) normalises each image's channels, in groups of 8, by that
image's own mean and variance, in training and evaluation alike: no running statistics,
and no dependence on the rest of the batch. Same convs, parameters count, pooling and head
as `cnn`; only the normalisation differs.
"""

from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from xray_jax.models import cnn


class ConvGN(nn.Module):
  features: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jnp.ndarray, *, train: bool) -> jnp.ndarray:
    del train  # the same normalisation in training and evaluation
    x = nn.Conv(self.features, (3, 3), padding="SAME", use_bias=False, dtype=self.dtype)(x)  # GroupNorm adds a bias
    x = nn.GroupNorm(num_groups=min(8, self.features), dtype=self.dtype)(x)
    return nn.relu(x)


class Model(cnn.Model):

  def block(self, x: jnp.ndarray, width: int, *, train: bool) -> jnp.ndarray:
    x = ConvGN(width, self.dtype)(x, train=train)
    return ConvGN(width, self.dtype)(x, train=train)
