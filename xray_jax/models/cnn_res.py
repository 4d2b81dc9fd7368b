"""The cnn with residual stages: the same two 3x3 convs per stage, plus a shortcut around them.

Each stage changes the width, so the shortcut is a 1x1 conv + BatchNorm (He et al. 2016,
projection shortcut): 4% more FLOPs than `cnn` (1.585 vs 1.521 GFLOP per training image).
The second BatchNorm's scale starts at zero (Goyal et al. 2017), so at initialisation every
stage is its shortcut and the network starts shallow. Pooling, head, dropout and the
saliency mark are those of `cnn`.
"""

from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from xray_jax.models import cnn


class ResStage(nn.Module):
  features: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jnp.ndarray, *, train: bool) -> jnp.ndarray:
    shortcut = nn.Conv(self.features, (1, 1), use_bias=False, dtype=self.dtype, name="proj")(x)
    shortcut = cnn.batch_norm(train=train, dtype=self.dtype, name="proj_bn")(shortcut)
    y = cnn.ConvBN(self.features, self.dtype)(x, train=train)
    y = nn.Conv(self.features, (3, 3), padding="SAME", use_bias=False, dtype=self.dtype)(y)
    y = cnn.batch_norm(train=train, dtype=self.dtype, scale_init=nn.initializers.zeros)(y)
    return nn.relu(y + shortcut)


class Model(cnn.Model):

  def block(self, x: jnp.ndarray, width: int, *, train: bool) -> jnp.ndarray:
    return ResStage(width, self.dtype)(x, train=train)
