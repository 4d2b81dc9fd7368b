"""The CPU compiler options of the train step: what they change in the compiled program, and not in the math."""

import jax
from jax import lax
import jax.numpy as jnp
import numpy as np
import pytest

from xray_jax import compile_options
from xray_jax import layers


def conv(x, w):
  return lax.conv_general_dilated(x, w, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))


def test_wanted_options_per_backend_and_environment():
  no_ynnpack_convs = {compile_options.OPTION: compile_options.NO_CONVOLUTIONS}
  assert compile_options.wanted({}, "cpu") == no_ynnpack_convs
  assert compile_options.wanted({"XRAY_JAX_CPU_CONV": "XLA"}, "cpu") == no_ynnpack_convs
  assert compile_options.wanted({}, "gpu") == {}
  assert compile_options.wanted({}, "tpu") == {}
  assert compile_options.wanted({"XRAY_JAX_CPU_CONV": "ynnpack"}, "cpu") == {}
  # The user's own setting of the option in XLA_FLAGS wins.
  flags = f"--xla_cpu_enable_fast_math=false --{compile_options.OPTION}=+eltwise"
  assert compile_options.wanted({"XLA_FLAGS": flags}, "cpu") == {}
  assert compile_options.wanted({"XLA_FLAGS": "--xla_cpu_enable_fast_math=false"}, "cpu") == no_ynnpack_convs
  with pytest.raises(ValueError, match="XRAY_JAX_CPU_CONV='eigen'.*'xla'.*'ynnpack'"):
    compile_options.wanted({"XRAY_JAX_CPU_CONV": "eigen"}, "cpu")


def test_an_option_this_jaxlib_does_not_know_is_left_out():
  assert not compile_options._accepted((("xla_cpu_no_such_option_anywhere", "1"),))


def _on_ynnpack(fn, *args, options) -> bool:
  """Whether XLA:CPU hands part of `fn` to YNNPACK (its fusions are of kind __ynn_fusion)."""
  return "__ynn_fusion" in jax.jit(fn, compiler_options=options).lower(*args).compile().as_text()


def test_convolutions_leave_ynnpack_and_everything_else_goes_where_the_defaults_send_it():
  options = compile_options.compiler_options()
  if jax.default_backend() != "cpu" or not options:
    pytest.skip("the option applies to XLA:CPU builds that know it")
  x, w = jnp.ones((2, 16, 16, 32)), jnp.ones((3, 3, 32, 32))
  if not _on_ynnpack(conv, x, w, options=None):
    pytest.skip("this jaxlib does not hand convolutions to YNNPACK")
  assert not _on_ynnpack(conv, x, w, options=options)
  assert "__ynn_fusion" not in compile_options.jit(conv).lower(x, w).compile().as_text()
  # The option's list replaces the default one: dots, reductions (BatchNorm's statistics)
  # and elementwise ops must keep the defaults' choice, whatever this jaxlib's defaults are.
  a, big = jnp.ones((64, 64)), jnp.ones((64, 32, 32, 64))
  probes = {"dot": (jnp.matmul, a, a), "reduce": (lambda t: jnp.sum(t, axis=(0, 1, 2)), big),
            "eltwise": (lambda t: jnp.tanh(t) * 2.0 + 1.0, big)}
  for name, (fn, *args) in probes.items():
    default = _on_ynnpack(fn, *args, options=None)
    assert _on_ynnpack(fn, *args, options=options) == default, name
  assert _on_ynnpack(jnp.matmul, a, a, options=options)  # this jaxlib: YNNPACK's dots kept


@pytest.mark.parametrize("conv_fn", [conv, layers.conv_general_dilated], ids=["lax", "layers"])
def test_convolution_values_and_gradients_equal_the_defaults(conv_fn):
  # The shapes of refcnn's second layer, batch 4: one YNNPACK convolution under the defaults.
  kx, kw, kg = jax.random.split(jax.random.key(0), 3)
  x = jax.random.normal(kx, (4, 64, 64, 32))
  w = jax.random.normal(kw, (3, 3, 32, 64)) * 0.1
  g = jax.random.normal(kg, (4, 64, 64, 64))
  f = conv if conv_fn is conv else (lambda x, w: conv_fn(x, w, (1, 1), "SAME",
                                                         dimension_numbers=("NHWC", "HWIO", "NHWC")))

  def outputs(x, w):
    y, vjp = jax.vjp(f, x, w)
    return (y, *vjp(g))

  ref = jax.jit(outputs)(x, w)
  fast = compile_options.jit(outputs)(x, w)
  for name, a, b in zip(("output", "input gradient", "kernel gradient"), fast, ref):
    scale = float(jnp.max(jnp.abs(b)))
    np.testing.assert_allclose(a, b, rtol=0, atol=1e-5 * scale, err_msg=name)
