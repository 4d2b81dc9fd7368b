"""`cnn_std_centre` at 5/4 of the `cnn` widths: about 1.56x its FLOPs.

With `cnn_narrow` (3/4, idea 10) this brackets the width of the chosen recipe; the faster CPU
step of 2026-11-24 leaves room for it in the 15-minute budget (experiments/RESULTS.md, idea 23).
"""

from xray_jax.models import cnn_std_centre


class Model(cnn_std_centre.Model):
  widths: tuple[int, ...] = (20, 40, 80, 160, 320)
