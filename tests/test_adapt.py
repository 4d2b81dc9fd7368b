"""Test-time BatchNorm adaptation (xray_jax/adapt.py) on real sample images."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import SAMPLE_DIR
from xray_jax import adapt
from xray_jax import input_pipeline
from xray_jax import learning
from xray_jax import models
from xray_jax.errors import UsageError

SIZE = 32


@pytest.fixture(scope="module")
def images():
  """The 60 sample test/ images at 32x32, as evaluation reads a folder."""
  ds, skipped, records = input_pipeline.folder_dataset(os.path.join(SAMPLE_DIR, "test"), image_size=SIZE,
                                                       max_side=SIZE)
  assert not skipped
  return ds, len(records)


def _state(name: str, ema_decay: float = 0.0) -> learning.TrainState:
  config = learning.TrainConfig(model=name, image_size=SIZE, ema_decay=ema_decay)
  return learning.create_train_state(config, models.get_model(name), jax.random.key(0), lambda s: 1e-3)


def _whole_set_training_stats(state: learning.TrainState, ds) -> dict:
  """Each BatchNorm's mean and variance in one training-mode pass over the whole set as one batch.

  Flax keeps only running averages, r' = m r + (1 - m) batch; from two starting points (0 and 1)
  the batch statistic is r0' / (1 - (r1' - r0')), whatever the momentum m.
  """
  x = jnp.asarray(np.stack([ex["image"] for ex in ds.as_numpy_iterator()]), jnp.float32) / 255.0

  def run(start):
    stats = jax.tree.map(lambda a: jnp.full_like(a, start), state.batch_stats)
    _, new = state.apply_fn({"params": state.params, "batch_stats": stats}, x, train=True,
                            mutable=["batch_stats"], rngs={"dropout": jax.random.key(1)})
    return new["batch_stats"]

  r0, r1 = run(0.0), run(1.0)
  return jax.tree.map(lambda a, b: a / (1.0 - (b - a)), r0, r1)


@pytest.mark.parametrize("name", ["cnn_res", "cnn_blurpool_late"])
def test_adapted_statistics_are_those_of_the_whole_set_in_one_training_pass(images, name):
  ds, n = images
  state = _state(name)
  adapted = adapt.adapt_batch_norm(state, ds, n, batch_size=16)  # 60 = 3 x 16 + 12 padded and masked out
  want = _whole_set_training_stats(state, ds)
  assert jax.tree.structure(adapted.batch_stats) == jax.tree.structure(want)
  for got, ref, old in zip(jax.tree.leaves(adapted.batch_stats), jax.tree.leaves(want),
                           jax.tree.leaves(state.batch_stats)):
    np.testing.assert_allclose(got, ref, rtol=2e-3, atol=2e-5)
    assert not np.allclose(got, old)  # the initial statistics (0 and 1) were replaced
  assert jax.tree.all(jax.tree.map(lambda a, b: a is b, adapted.params, state.params))  # weights untouched


def test_adapted_statistics_do_not_depend_on_the_batch_size(images):
  ds, n = images
  state = _state("cnn")
  a = adapt.adapt_batch_norm(state, ds, n, batch_size=7)
  b = adapt.adapt_batch_norm(state, ds, n, batch_size=64)
  for x, y in zip(jax.tree.leaves(a.batch_stats), jax.tree.leaves(b.batch_stats)):
    np.testing.assert_allclose(x, y, rtol=1e-4, atol=1e-6)


def test_batch_norm_paths_follow_the_call_order_past_ten_layers():
  state = _state("cnn")
  paths = adapt.batch_norm_paths(state.apply_fn, {"params": state.params, "batch_stats": state.batch_stats},
                                 (SIZE, SIZE, 1))
  # Ten blocks: call order puts ConvBN_10 after ConvBN_9, where sorted names would not.
  assert [p[0] for p in paths] == [f"ConvBN_{i}" for i in range(10)]


def test_prior_mixes_the_training_statistics_in_as_that_many_images(images):
  ds, n = images
  state = _state("cnn")
  full = adapt.adapt_batch_norm(state, ds, n, batch_size=16)
  half = adapt.adapt_batch_norm(state, ds, n, batch_size=16, prior=float(n))
  # The first BatchNorm's input does not depend on the others, so its mix is exact.
  first = lambda s: s["ConvBN_0"]["BatchNorm_0"]
  for key in ("mean", "var"):
    np.testing.assert_allclose(first(half.batch_stats)[key],
                               0.5 * first(full.batch_stats)[key] + 0.5 * first(state.batch_stats)[key], rtol=1e-5)
  with pytest.raises(UsageError, match="--adapt_bn_prior=-1"):
    adapt.adapt_batch_norm(state, ds, n, batch_size=16, prior=-1.0)


def test_with_a_moving_average_the_evaluated_statistics_are_the_ones_replaced(images):
  ds, n = images
  state = _state("cnn", ema_decay=0.99)
  adapted = adapt.adapt_batch_norm(state, ds, n, batch_size=16)
  assert jax.tree.all(jax.tree.map(np.array_equal, adapted.batch_stats, state.batch_stats))
  assert not np.allclose(adapted.ema["batch_stats"]["ConvBN_0"]["BatchNorm_0"]["mean"],
                         state.ema["batch_stats"]["ConvBN_0"]["BatchNorm_0"]["mean"])


def test_a_model_without_batch_norm_or_an_empty_set_is_refused(images):
  ds, n = images
  with pytest.raises(UsageError, match="no BatchNorm statistics.*without --adapt_bn"):
    adapt.adapt_batch_norm(_state("mlp"), ds, n, batch_size=16)
  with pytest.raises(UsageError, match="no images"):
    adapt.adapt_batch_norm(_state("cnn"), ds.take(0), 0, batch_size=16)
