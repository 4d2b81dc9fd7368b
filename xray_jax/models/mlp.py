"""Dense baseline: the image flattened, two hidden layers. What the CNNs must beat."""

from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax.numpy as jnp


class Model(nn.Module):
  num_classes: int = 2
  hidden: Sequence[int] = (512, 128)
  dropout: float = 0.3
  dtype: Any = jnp.float32  # compute dtype (--dtype); parameters stay float32

  @nn.compact
  def __call__(self, x: jnp.ndarray, *, train: bool) -> jnp.ndarray:
    x = x.reshape((x.shape[0], -1))
    for width in self.hidden:
      x = nn.relu(nn.Dense(width, dtype=self.dtype)(x))
      x = nn.Dropout(self.dropout, deterministic=not train)(x)
    return nn.Dense(self.num_classes, dtype=self.dtype)(x)
