"""Every fast layer in xray_jax/layers.py equals the library op it replaces, in values and gradients.

The one exception, pinned down below: max_pool_2x2 splits the gradient of tied maxima.
"""

import flax.linen as nn
import jax
from jax import lax
import jax.numpy as jnp
import numpy as np
import pytest

from xray_jax import compile_options
from xray_jax import layers


@pytest.mark.parametrize("shape", [(2, 8, 8, 3), (1, 7, 9, 2), (3, 128, 128, 1)])
def test_fast_max_pool_equals_flax_max_pool_in_values_and_gradients(shape):
  x = jax.random.normal(jax.random.key(0), shape)
  ref = lambda x: nn.max_pool(x, (2, 2), strides=(2, 2))
  np.testing.assert_array_equal(layers.max_pool_2x2(x), ref(x))
  g = jax.random.normal(jax.random.key(1), ref(x).shape)
  grad = lambda f: jax.grad(lambda x: jnp.sum(f(x) * g))(x)
  np.testing.assert_array_equal(grad(layers.max_pool_2x2), grad(ref))


def _max_2x2_stride1_by_autodiff(x):
  # The layer's own corners: plain slices of a pad, which autodiff differentiates as it did before.
  a, b, c, d = layers._edge_padded_corners(x)  # pylint: disable=protected-access
  return jnp.maximum(jnp.maximum(a, b), jnp.maximum(c, d))


@pytest.mark.parametrize("shape", [(2, 12, 16, 3), (1, 2, 2, 1), (3, 4, 10, 2), (2, 128, 128, 16)])
def test_max_2x2_stride1_equals_its_autodiff_bit_for_bit_ties_included(shape):
  """The written-out backward must not move a bit: the recorded cnn_blurpool runs depend on it."""
  x = jax.nn.relu(jax.random.normal(jax.random.key(0), shape))  # zeros tie, as after a ReLU
  x = x.at[:, ::3].set(0.5).at[:, :, ::5].set(jnp.round(x[:, :, ::5]))  # ties among positives too
  x = x.at[:, -1, :2].set(-0.0)  # signed zeros on the padded edge
  g = jax.random.normal(jax.random.key(1), shape).at[:, ::4].set(0.0)
  bits = lambda a: np.asarray(a).view(np.int32)
  for f in (jax.jit, lambda f: f):  # compiled and eager
    want, vjp_want = f(lambda x: jax.vjp(_max_2x2_stride1_by_autodiff, x))(x)
    got, vjp_got = f(lambda x: jax.vjp(layers.max_2x2_stride1, x))(x)
    np.testing.assert_array_equal(bits(got), bits(want))
    np.testing.assert_array_equal(bits(vjp_got(g)[0]), bits(vjp_want(g)[0]))
  corners = jnp.stack(layers._edge_padded_corners(x))  # pylint: disable=protected-access
  ties = jnp.sum(corners == corners.max(axis=0), axis=0) > 1
  assert float(jnp.mean(ties)) > 0.2  # the split-in-half rule is exercised, not just the unique maxima


def test_fast_max_pool_splits_the_gradient_of_tied_maxima():
  # Whole numbers through a ReLU: many windows tie, at zero and above.
  x = jax.nn.relu(jnp.round(jax.random.normal(jax.random.key(0), (2, 8, 8, 3))))
  ref = lambda x: nn.max_pool(x, (2, 2), strides=(2, 2))
  np.testing.assert_array_equal(layers.max_pool_2x2(x), ref(x))
  g = jax.random.normal(jax.random.key(1), ref(x).shape)
  fast, lib = (jax.grad(lambda x: jnp.sum(f(x) * g))(x).reshape(2, 4, 2, 4, 2, 3) for f in (layers.max_pool_2x2, ref))
  windows = x.reshape(2, 4, 2, 4, 2, 3)
  tied = (windows == ref(x)[:, :, None, :, None]).sum(axis=(2, 4))
  assert (tied > 1).any() and (tied == 1).any()
  # Each window passes on the same total; nn.max_pool gives it to one element, this splits it.
  np.testing.assert_allclose(fast.sum(axis=(2, 4)), lib.sum(axis=(2, 4)), rtol=1e-6, atol=1e-6)
  assert ((lib != 0).sum(axis=(2, 4)) == 1).all()
  is_max = windows == ref(x)[:, :, None, :, None]
  share = (g / tied)[:, :, None, :, None]
  np.testing.assert_allclose(fast, jnp.where(is_max, share, 0), rtol=1e-6)


@pytest.fixture
def matmul_kernel_grad(monkeypatch):
  """The setting where layers.conv_general_dilated computes kernel gradients as matmuls."""
  monkeypatch.setenv("XRAY_JAX_CPU_CONV", "ynnpack")
  monkeypatch.delenv("XLA_FLAGS", raising=False)
  assert jax.default_backend() == "cpu"


def _uses_custom_gradient(conv, x, k, **kwargs) -> bool:
  return "custom_vjp_call" in str(jax.make_jaxpr(lambda x, k: conv(x, k, **kwargs))(x, k))


def _value_and_grads(conv, x, k, **kwargs):
  y = conv(x, k, **kwargs)
  g = jax.random.normal(jax.random.key(7), y.shape)  # a random cotangent, not a symmetric one
  dx, dk = jax.jit(jax.grad(lambda x, k: jnp.sum(conv(x, k, **kwargs) * g), argnums=(0, 1)))(x, k)
  return y, dx, dk


NHWC = ("NHWC", "HWIO", "NHWC")


@pytest.mark.parametrize("x_shape,k_shape,padding", [
    ((2, 16, 16, 1), (3, 3, 1, 8), "SAME"),       # first layer: one input channel
    ((3, 12, 10, 5), (3, 3, 5, 7), "SAME"),       # non-square image
    ((2, 9, 9, 4), (3, 3, 4, 6), "VALID"),
    ((2, 11, 13, 3), (5, 3, 3, 4), ((2, 1), (0, 3))),  # non-square kernel, uneven explicit padding
])
def test_fast_conv_equals_lax_conv_in_values_and_gradients(x_shape, k_shape, padding, matmul_kernel_grad):
  x = jax.random.normal(jax.random.key(0), x_shape)
  k = jax.random.normal(jax.random.key(1), k_shape)
  kwargs = dict(window_strides=(1, 1), padding=padding, dimension_numbers=NHWC)
  assert _uses_custom_gradient(layers.conv_general_dilated, x, k, **kwargs)
  got = _value_and_grads(layers.conv_general_dilated, x, k, **kwargs)
  want = _value_and_grads(lax.conv_general_dilated, x, k, **kwargs)
  np.testing.assert_array_equal(got[0], want[0])  # forward: the same XLA convolution
  np.testing.assert_array_equal(got[1], want[1])  # input gradient: the same XLA convolution
  # Kernel gradient: the same sums in another order, so equal to float32 rounding.
  np.testing.assert_allclose(got[2], want[2], rtol=1e-5, atol=1e-5 * float(jnp.abs(want[2]).max()))


def test_fast_conv_is_lax_where_xla_convolves(monkeypatch):
  # The CPU default: XLA's own convolutions, whose kernel gradient beats the matmuls.
  x = jax.random.normal(jax.random.key(0), (2, 8, 8, 3))
  k = jax.random.normal(jax.random.key(1), (3, 3, 3, 4))
  kwargs = dict(window_strides=(1, 1), padding="SAME", dimension_numbers=NHWC)
  monkeypatch.delenv("XRAY_JAX_CPU_CONV", raising=False)
  monkeypatch.delenv("XLA_FLAGS", raising=False)
  assert not _uses_custom_gradient(layers.conv_general_dilated, x, k, **kwargs)
  monkeypatch.setenv("XRAY_JAX_CPU_CONV", "ynnpack")
  assert _uses_custom_gradient(layers.conv_general_dilated, x, k, **kwargs)


def test_fast_conv_leaves_strided_convs_to_lax(matmul_kernel_grad):
  x = jax.random.normal(jax.random.key(0), (2, 8, 8, 3))
  k = jax.random.normal(jax.random.key(1), (3, 3, 3, 4))
  kwargs = dict(window_strides=(2, 2), padding="SAME", dimension_numbers=NHWC)
  assert not _uses_custom_gradient(layers.conv_general_dilated, x, k, **kwargs)
  for got, want in zip(_value_and_grads(layers.conv_general_dilated, x, k, **kwargs),
                       _value_and_grads(lax.conv_general_dilated, x, k, **kwargs)):
    np.testing.assert_array_equal(got, want)


@pytest.fixture
def xla_convolutions(monkeypatch):
  """The CPU default: XLA's own convolutions in the train step."""
  monkeypatch.delenv("XRAY_JAX_CPU_CONV", raising=False)
  monkeypatch.delenv("XLA_FLAGS", raising=False)
  assert jax.default_backend() == "cpu" and not compile_options.ynnpack_convolutions()


@pytest.mark.parametrize("x_shape,k_shape,padding", [
    ((2, 16, 16, 1), (3, 3, 1, 8), "SAME"),
    ((3, 12, 10, 1), (5, 3, 1, 4), ((2, 1), (0, 3))),  # non-square kernel, uneven explicit padding
    ((2, 9, 9, 1), (3, 3, 1, 6), "VALID"),
])
def test_one_channel_conv_equals_lax_conv_in_values_and_gradients(x_shape, k_shape, padding, xla_convolutions):
  x = jax.random.uniform(jax.random.key(0), x_shape)
  k = jax.random.normal(jax.random.key(1), k_shape)
  kwargs = dict(window_strides=(1, 1), padding=padding, dimension_numbers=NHWC)
  fast = lambda x, k: layers.conv_general_dilated(x, k, **kwargs)
  ref = lambda x, k: lax.conv_general_dilated(x, k, **kwargs)
  assert _uses_custom_gradient(layers.conv_general_dilated, x, k, **kwargs)
  # Not differentiated (inference): the lax op itself.
  np.testing.assert_array_equal(jax.jit(fast)(x, k), jax.jit(ref)(x, k))
  # Differentiated: the forward pass by multiply-adds and the kernel gradient by one matmul,
  # the same sums in another order; the input gradient is XLA's own.
  y, fast_vjp = jax.vjp(fast, x, k)
  want_y, ref_vjp = jax.vjp(ref, x, k)
  np.testing.assert_allclose(y, want_y, rtol=1e-5, atol=1e-6 * float(jnp.abs(want_y).max()))
  g = jax.random.normal(jax.random.key(7), y.shape)
  (dx, dk), (want_dx, want_dk) = fast_vjp(g), ref_vjp(g)
  np.testing.assert_array_equal(dx, want_dx)
  np.testing.assert_allclose(dk, want_dk, rtol=1e-5, atol=1e-5 * float(jnp.abs(want_dk).max()))


def test_one_channel_path_is_float32_only(xla_convolutions):
  x = jax.random.uniform(jax.random.key(0), (2, 8, 8, 1))
  k = jax.random.normal(jax.random.key(1), (3, 3, 1, 4))
  kwargs = dict(window_strides=(1, 1), padding="SAME", dimension_numbers=NHWC)
  assert _uses_custom_gradient(layers.conv_general_dilated, x, k, **kwargs)
  assert not _uses_custom_gradient(layers.conv_general_dilated, x.astype(jnp.bfloat16),
                                   k.astype(jnp.bfloat16), **kwargs)


@pytest.mark.parametrize("channels,setting", [(3, "matmul_kernel_grad"), (1, "matmul_kernel_grad"),
                                              (1, "xla_convolutions")])
def test_fast_conv_module_has_nn_conv_parameters_and_gradients(channels, setting, request):
  request.getfixturevalue(setting)
  x = jax.random.normal(jax.random.key(0), (2, 16, 16, channels))
  fast, ref = layers.Conv(8, (3, 3)), nn.Conv(8, (3, 3))
  params = ref.init(jax.random.key(1), x)
  assert jax.tree.structure(fast.init(jax.random.key(1), x)) == jax.tree.structure(params)
  loss = lambda m: jax.grad(lambda p: jnp.sum(jnp.sin(m.apply(p, x))))(params)
  for got, want in zip(jax.tree.leaves(loss(fast)), jax.tree.leaves(loss(ref))):
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
