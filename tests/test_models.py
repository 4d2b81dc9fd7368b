import functools
import textwrap

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from xray_jax import layers
from xray_jax import models
from xray_jax.errors import UsageError

# Pinned so that an accidental architecture change shows up as a failing test.
PARAM_COUNTS = {"cnn": 1_179_986, "mlp": 8_455_042, "refcnn": 389_314}


def _init(model, size=128):
  variables = model.init(jax.random.key(0), jnp.zeros((2, size, size, 1)), train=False)
  # Grad-CAM's zero perturbation has the init batch's shape: it is not a model weight.
  return {k: v for k, v in variables.items() if k != "perturbations"}


@pytest.mark.parametrize("name", sorted(PARAM_COUNTS))
def test_output_shape_and_exact_param_count(name):
  model = models.get_model(name)
  variables = _init(model)
  n_params = sum(x.size for x in jax.tree.leaves(variables["params"]))
  assert n_params == PARAM_COUNTS[name]
  logits = model.apply(variables, jnp.ones((3, 128, 128, 1)) * 0.5, train=False)
  assert logits.shape == (3, 2) and logits.dtype == jnp.float32


def test_refcnn_matches_shared_bench_layers():
  """389,314 = convs 387,840 + BatchNorm scale/bias 960 + Dense 514, as the Keras twin."""
  params = _init(models.get_model("refcnn"))["params"]
  convs = [params[f"Conv_{i}"] for i in range(4)]
  assert [c["kernel"].shape for c in convs] == [(3, 3, 1, 32), (3, 3, 32, 64), (3, 3, 64, 128), (3, 3, 128, 256)]
  assert all("bias" in c for c in convs)
  assert params["Dense_0"]["kernel"].shape == (256, 2)


@pytest.mark.parametrize("name", sorted(PARAM_COUNTS))
def test_jit_and_eager_agree(name):
  model = models.get_model(name)
  variables = _init(model, 64)
  x = jax.random.uniform(jax.random.key(1), (2, 64, 64, 1))
  eager = model.apply(variables, x, train=False)
  jitted = jax.jit(functools.partial(model.apply, train=False))(variables, x)
  np.testing.assert_allclose(eager, jitted, rtol=1e-4, atol=1e-5)


def test_unknown_model_lists_known_ones():
  with pytest.raises(UsageError, match="known models: cnn, mlp, refcnn"):
    models.get_model("resnet9000")


def test_new_model_file_is_found_by_name(tmp_path, monkeypatch):
  """A new file in the models folder is the whole job of adding an architecture."""
  (tmp_path / "tiny.py").write_text(textwrap.dedent("""
      import flax.linen as nn
      class Model(nn.Module):
        num_classes: int = 2
        @nn.compact
        def __call__(self, x, *, train):
          return nn.Dense(self.num_classes)(x.reshape((x.shape[0], -1)))
  """))
  monkeypatch.setattr(models, "__path__", [*models.__path__, str(tmp_path)])
  assert "tiny" in models.available()
  model = models.get_model("tiny")
  assert model.apply(_init(model, 8), jnp.zeros((1, 8, 8, 1)), train=False).shape == (1, 2)


def test_cnn_rejects_image_size_it_cannot_pool():
  with pytest.raises(ValueError, match="divisible by 32"):
    _init(models.get_model("cnn"), 100)


@pytest.mark.parametrize("shape", [(2, 8, 8, 3), (1, 7, 9, 2), (3, 128, 128, 1)])
def test_fast_max_pool_equals_flax_max_pool_in_values_and_gradients(shape):
  x = jax.random.normal(jax.random.key(0), shape)
  ref = lambda x: nn.max_pool(x, (2, 2), strides=(2, 2))
  np.testing.assert_array_equal(layers.max_pool_2x2(x), ref(x))
  g = jax.random.normal(jax.random.key(1), ref(x).shape)
  grad = lambda f: jax.grad(lambda x: jnp.sum(f(x) * g))(x)
  np.testing.assert_array_equal(grad(layers.max_pool_2x2), grad(ref))
