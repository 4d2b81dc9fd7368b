"""`cnn_blurpool_late` (the `cnn` recipe's model) with generalised-mean (GeM) global pooling.

Global average pooling gives every position of the last map the same say, so a film framed
wider (zoom-out's black border) or with flat bands (collimation) has its pooled features
diluted by the area that holds no lung, in proportion to that area. GeM (Radenovic, Tolias and
Chum 2018) pools (mean(x^p))^(1/p) with one learned exponent p per model (initialised at 3):
p = 1 is the mean, large p nears the max. Positions whose activations are low (after ReLU, zero
at the least) then scale a feature by (1 - f)^(1/p) instead of (1 - f), and focal evidence (a
consolidation in one lobe) weighs more than its area. Whether a border's activations are low in
the trained model is what the experiment finds out (experiments/RESULTS.md, idea 38). One
parameter more than `cnn`.
"""

import flax.linen as nn
import jax.numpy as jnp

from xray_jax.models import cnn_blurpool_late

P_INIT = 3.0
# p is kept in [1, P_MAX] and the pooled values floored at EPS so that EPS^P_MAX (1e-32) stays a
# normal float32: a channel that is zero everywhere then pools to EPS with finite gradients.
P_MAX = 8.0
EPS = 1e-4


def gem(x_BxHxWxC: jnp.ndarray, p: jnp.ndarray) -> jnp.ndarray:
  """Generalised mean over height and width, in float32: [B, H, W, C] -> [B, C]; 1 <= p <= P_MAX."""
  x = jnp.maximum(x_BxHxWxC.astype(jnp.float32), EPS)
  return jnp.mean(x ** p, axis=(1, 2)) ** (1.0 / p)


class Model(cnn_blurpool_late.Model):

  def global_pool(self, x_BxHxWxC: jnp.ndarray) -> jnp.ndarray:
    p = self.param("gem_p", nn.initializers.constant(P_INIT), ())
    # Below 1 the generalised mean no longer leans towards the max (and at 0 it is undefined).
    return gem(x_BxHxWxC, jnp.clip(p, 1.0, P_MAX)).astype(x_BxHxWxC.dtype)
