"""The cnn with dropout 0.5 before its head instead of 0.3: the dropout-rate idea of experiments/.

Same blocks, pooling, head and saliency mark as `cnn`; only the rate of the one Dropout on
the pooled 256 features changes (experiments/RESULTS.md, idea 21).
"""

from xray_jax.models import cnn


class Model(cnn.Model):
  dropout: float = 0.5
