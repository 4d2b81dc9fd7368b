"""The reference CNN of shared/bench (Keras and PyTorch twins), layer for layer.

Four blocks of Conv 3x3 'same' (with bias) -> BatchNorm -> ReLU -> MaxPool 2x2, widths
32, 64, 128, 256, then global average pooling and Dense(num_classes): 389,314 trainable
parameters for one input channel and two classes. Kept identical for speed comparisons;
the `cnn` model is the one tuned for accuracy.
"""

from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from xray_jax import layers
from xray_jax import saliency


class Model(nn.Module):
  num_classes: int = 2
  widths: tuple[int, ...] = (32, 64, 128, 256)
  dtype: Any = jnp.float32  # compute dtype (--dtype); parameters stay float32

  @nn.compact
  def __call__(self, x: jnp.ndarray, *, train: bool) -> jnp.ndarray:
    for i, width in enumerate(self.widths):
      x = layers.Conv(width, (3, 3), padding="SAME", dtype=self.dtype)(x)
      # Keras' BatchNormalization defaults, to match the reference.
      x = nn.BatchNorm(use_running_average=not train, momentum=0.99, epsilon=1e-3, dtype=self.dtype)(x)
      x = nn.relu(x)
      if i == len(self.widths) - 1:
        x = saliency.mark_features(self, x)  # the last conv block, for Grad-CAM
      x = layers.max_pool_2x2(x)  # nn.max_pool 2x2's values, faster on CPU (see its docstring)
    x = jnp.mean(x, axis=(1, 2))
    return nn.Dense(self.num_classes, dtype=self.dtype)(x)
