"""`cnn_std_centre` with anti-aliased pooling (MaxBlurPool, Zhang 2019).

A stride-2 max-pool samples its input without low-pass filtering it first, so a one-pixel
shift of the film, or a slight change of scale or sharpness, can change what reaches the
next stage (aliasing). MaxBlurPool takes the 2x2 max at stride 1, then blurs it with the
3x3 binomial filter [1, 2, 1] x [1, 2, 1] / 16 and keeps every second pixel. No parameters
are added; the convs, head and standardisation are those of `cnn_std_centre`
(experiments/RESULTS.md, idea 28).
"""

import jax.numpy as jnp

from xray_jax import layers
from xray_jax.models import cnn_std_centre


def max_blur_pool_2x2(x_BxHxWxC: jnp.ndarray) -> jnp.ndarray:
  """2x2 max at stride 1 (edge-padded at the bottom and right), then a binomial blur at stride 2
  (reflect-padded): [B, H, W, C] -> [B, H // 2, W // 2, C] for even H and W."""
  h, w = x_BxHxWxC.shape[1:3]
  if h % 2 or w % 2:
    raise ValueError(f"max_blur_pool_2x2 needs an even height and width; got {h}x{w}.")
  x = layers.max_2x2_stride1(x_BxHxWxC)
  x = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)), mode="reflect")
  # Output pixel i is centred on input pixel 2i: taps 2i - 1, 2i, 2i + 1 of the unpadded image.
  x = (x[:, 0:h:2] + 2 * x[:, 1:h + 1:2] + x[:, 2:h + 2:2]) / 4
  return (x[:, :, 0:w:2] + 2 * x[:, :, 1:w + 1:2] + x[:, :, 2:w + 2:2]) / 4


class Model(cnn_std_centre.Model):

  def pool(self, x: jnp.ndarray, *, stage: int) -> jnp.ndarray:
    del stage
    return max_blur_pool_2x2(x)
