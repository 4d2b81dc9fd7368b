"""The cnn at three quarters of its widths: about 0.56x its FLOPs, for the 10-minute budget.

Same blocks, pooling, head and saliency mark as `cnn`; only the widths change. A model that
differs from another by its hyper-parameters is a subclass that overrides the fields.
"""

from xray_jax.models import cnn


class Model(cnn.Model):
  widths: tuple[int, ...] = (12, 24, 48, 96, 192)
