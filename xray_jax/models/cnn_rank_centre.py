"""The cnn on rank-transformed input: each pixel replaced by its rank among the film's central pixels.

`cnn_std_centre` removes any affine change of intensity (exposure, contrast) by standardising
each film with the mean and deviation of its central square. A rank transform removes every
monotone one, gamma and a film's tone curve included: each pixel becomes the fraction of the
central square's pixels below it (ties counted half), mapped to mean 0 and deviation 1 for a
uniform spread. Same convs, parameters and head as `cnn` (experiments/RESULTS.md, idea 24).
Piecewise constant in the pixel values, so gradients with respect to the input are zero:
integrated gradients say nothing for this model (Grad-CAM, on the last conv block, still works).
"""

import jax
import jax.numpy as jnp

from xray_jax.models import cnn
from xray_jax.models import cnn_std


def rank_transform(x_BxHxWxC: jnp.ndarray, centre: float = 0.5) -> jnp.ndarray:
  """Each pixel's mid-rank among the central `centre` fraction (per side) of its image's pixels,
  as (rank - 1/2) * sqrt(12): about mean 0, deviation 1 inside that square."""
  x = x_BxHxWxC.astype(jnp.float32)

  def one(image, region):
    reference = jnp.sort(region.ravel())
    flat = image.ravel()
    below = jnp.searchsorted(reference, flat, side="left")
    not_above = jnp.searchsorted(reference, flat, side="right")
    rank = (below + not_above) / (2.0 * reference.size)
    return ((rank - 0.5) * jnp.sqrt(12.0)).reshape(image.shape)

  return jax.lax.stop_gradient(jax.vmap(one)(x, cnn_std.central_square(x, centre)))


class Model(cnn.Model):
  centre: float = 0.5  # fraction of each side whose pixels are the reference

  def __call__(self, x: jnp.ndarray, *, train: bool) -> jnp.ndarray:
    return super().__call__(rank_transform(x, self.centre), train=train)
