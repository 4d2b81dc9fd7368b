"""`cnn_blurpool` with a plain 2x2 max-pool after the first stage, MaxBlurPool after the others.

The first stage's pool is MaxBlurPool's largest and dearest pass (its stride-1 max and blur run
on 128x128 activations): the `cnn_blurpool` step costs about 1.4x that of `cnn_std_centre`, and
keeping the first pool plain takes back about half of that (the step 1.12-1.16x faster than
`cnn_blurpool`'s, benchmarks/RESULTS.md). Asks whether anti-aliasing the later, coarser stages
keeps the robustness that idea 28 bought: at their final checkpoints three seeds do; at the
kept (best-validation) ones one seed in three falls back on zoom (experiments/RESULTS.md, idea 30).
"""

import jax.numpy as jnp

from xray_jax import layers
from xray_jax.models import cnn_blurpool
from xray_jax.models import cnn_std_centre


class Model(cnn_std_centre.Model):

  def pool(self, x: jnp.ndarray, *, stage: int) -> jnp.ndarray:
    return layers.max_pool_2x2(x) if stage == 0 else cnn_blurpool.max_blur_pool_2x2(x)
