"""The CNN tuned for this task: VGG-style blocks with BatchNorm, global pooling, dropout.

Five blocks of two Conv 3x3 -> BatchNorm -> ReLU, then a 2x2 max-pool; widths double
from 16. Narrow early blocks keep the cost at 128x128 low (the first block runs on the
most pixels); global average pooling keeps the head small and lets the model take any
image size divisible by 32. The last block's activations are marked for
saliency methods that need the last conv block (Grad-CAM) by `saliency.mark_features`.
"""

from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from xray_jax import layers
from xray_jax import saliency


def batch_norm(*, train: bool, dtype: Any, **kwargs) -> nn.BatchNorm:
  """The BatchNorm of every cnn stage (and of its variants), in one place."""
  return nn.BatchNorm(use_running_average=not train, momentum=0.9, dtype=dtype, **kwargs)


class ConvBN(nn.Module):
  features: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jnp.ndarray, *, train: bool) -> jnp.ndarray:
    x = nn.Conv(self.features, (3, 3), padding="SAME", use_bias=False, dtype=self.dtype)(x)  # BatchNorm supplies the bias
    x = batch_norm(train=train, dtype=self.dtype)(x)
    return nn.relu(x)


class Model(nn.Module):
  num_classes: int = 2
  widths: tuple[int, ...] = (16, 32, 64, 128, 256)
  dropout: float = 0.3
  dtype: Any = jnp.float32  # compute dtype (--dtype); parameters stay float32

  @nn.compact
  def __call__(self, x: jnp.ndarray, *, train: bool) -> jnp.ndarray:
    factor = 2 ** len(self.widths)
    if x.shape[1] % factor or x.shape[2] % factor:
      raise ValueError(f"cnn needs an image size divisible by {factor}; got {x.shape[1]}x{x.shape[2]}.")
    for i, width in enumerate(self.widths):
      x = self.block(x, width, train=train)
      if i == len(self.widths) - 1:
        x = saliency.mark_features(self, x)
      x = self.pool(x, stage=i)
    x = self.global_pool(x)
    x = nn.Dropout(self.dropout, deterministic=not train)(x)
    return nn.Dense(self.num_classes, dtype=self.dtype)(x)

  def block(self, x: jnp.ndarray, width: int, *, train: bool) -> jnp.ndarray:
    """One stage before its pool; a variant that changes only this overrides it (cnn_res)."""
    x = ConvBN(width, self.dtype)(x, train=train)
    return ConvBN(width, self.dtype)(x, train=train)

  def pool(self, x: jnp.ndarray, *, stage: int) -> jnp.ndarray:
    """Halves the resolution after stage `stage` (0 first); a variant that changes only this overrides it
    (cnn_blurpool)."""
    del stage
    return layers.max_pool_2x2(x)

  def global_pool(self, x_BxHxWxC: jnp.ndarray) -> jnp.ndarray:
    """The last stage's map to one feature vector per image: [B, H, W, C] -> [B, C]; a variant
    that changes only this overrides it (cnn_gem)."""
    return jnp.mean(x_BxHxWxC, axis=(1, 2))
