"""The cnn on per-image standardised input: each film shifted to mean 0 and scaled to std 1.

Films from another hospital differ first in exposure and contrast. Augmentation teaches
`cnn` to tolerate such changes; standardising each image by its own pixel mean and
standard deviation removes any affine change of intensity outright, before the first
layer (up to clipping at black and white). Same convs, parameters, pooling and head as
`cnn` (experiments/RESULTS.md, idea 22). With `centre` < 1 the statistics come from the
central square of that fraction of the side only, so that a black border or a burnt-in
label at the edge does not move them (`cnn_std_centre`).
"""

import jax.numpy as jnp

from xray_jax.models import cnn

# Floor of the per-image standard deviation: a blank image (std 0) stays finite. Real films
# in [0, 1] have a std of 0.1-0.3.
MIN_STD = 1e-2


def central_square(x_BxHxWxC: jnp.ndarray, centre: float) -> jnp.ndarray:
  """The central `centre` fraction of each side of every image (all of it for centre = 1)."""
  h, w = x_BxHxWxC.shape[1:3]
  dh, dw = round(h * (1 - centre) / 2), round(w * (1 - centre) / 2)
  return x_BxHxWxC[:, dh:h - dh, dw:w - dw, :]


def standardise(x_BxHxWxC: jnp.ndarray, centre: float = 1.0) -> jnp.ndarray:
  """Each image minus its mean, over its standard deviation (floored at MIN_STD).

  The mean and deviation are those of the central `centre` fraction of each side.
  """
  x = x_BxHxWxC.astype(jnp.float32)
  region = central_square(x, centre)
  mean = jnp.mean(region, axis=(1, 2, 3), keepdims=True)
  std = jnp.std(region, axis=(1, 2, 3), keepdims=True)
  return (x - mean) / jnp.maximum(std, MIN_STD)


class Model(cnn.Model):
  centre: float = 1.0  # fraction of each side whose pixels give the statistics

  def __call__(self, x: jnp.ndarray, *, train: bool) -> jnp.ndarray:
    return super().__call__(standardise(x, self.centre), train=train)
