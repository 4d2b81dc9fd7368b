"""`cnn_std` with the statistics of the central half of each side only.

The whole-image mean and deviation of `cnn_std` move when a film is framed wider (a black
border: the stress set's zoom-out), so the standardised image changes with framing. The
central square, half the side, holds lungs and mediastinum at any framing in the stress
set (experiments/RESULTS.md, idea 22).
"""

from xray_jax.models import cnn_std


class Model(cnn_std.Model):
  centre: float = 0.5
