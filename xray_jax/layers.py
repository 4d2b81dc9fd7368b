"""Small layers with faster formulations than the generic library ops, same math."""

import functools

import flax.linen as nn
import jax
from jax import lax
import jax.numpy as jnp

from xray_jax import compile_options


def max_pool_2x2(x_BxHxWxC: jnp.ndarray) -> jnp.ndarray:
  """2x2 max-pool, stride 2, as a reshape and a max.

  Equal in values to `nn.max_pool(x, (2, 2), strides=(2, 2))` (odd trailing rows/columns
  are dropped, as VALID pooling does), and in gradients wherever a window's maximum is
  unique; XLA's CPU backend runs it several times faster than its generic reduce_window.
  Where several elements tie for the maximum, jnp.max's gradient splits a window's
  gradient equally among them and nn.max_pool's gives it all to the first: both are
  subgradients, with the same sum per window. After Conv -> BatchNorm -> ReLU this
  happens in uniform image regions (about 2% of the first pool's windows on real X-rays
  in training mode; ties at zero, 30-50%, get no gradient through the ReLU either way).
  A custom gradient that picks the first was 5% slower per `refcnn` step and would change
  the recorded runs, so the split stays (benchmarks/RESULTS.md).
  """
  b, h, w, c = x_BxHxWxC.shape
  x = x_BxHxWxC[:, : h // 2 * 2, : w // 2 * 2, :]
  return jnp.max(x.reshape(b, h // 2, 2, w // 2, 2, c), axis=(2, 4))


def _edge_padded_corners(x):
  xp = jnp.pad(x, ((0, 0), (0, 1), (0, 1), (0, 0)), mode="edge")
  return xp[:, :-1, :-1], xp[:, 1:, :-1], xp[:, :-1, 1:], xp[:, 1:, 1:]


@jax.custom_vjp
def max_2x2_stride1(x_BxHxWxC: jnp.ndarray) -> jnp.ndarray:
  """2x2 max at stride 1, the input edge-padded at the bottom and right: [B, H, W, C] -> same shape.

  The values, and the gradients bit for bit, of
  `maximum(maximum(a, b), maximum(c, d))` over the four window corners (MaxBlurPool's first
  half), whose autodiff splits a tie in half as `lax.max` does. Only the backward pass is
  written out: it recomputes the tie weights from the input with selects (autodiff divides by 1
  or 2 and keeps six weight arrays from the forward pass) and sums the four windows' shares in
  autodiff's order, ((d + c) + b) + a, in one pass, so nothing changes by a bit. On CPU that made
  the `cnn_blurpool` step 1.04-1.07x faster, and the one-pass sum the `cnn` step 1.05-1.19x faster
  again (benchmarks/RESULTS.md). tests/test_layers.py checks the bits.
  """
  a, b, c, d = _edge_padded_corners(x_BxHxWxC)
  return jnp.maximum(jnp.maximum(a, b), jnp.maximum(c, d))


def _tie_weight(u, z, v):
  """d max(u, v) / du where z = max(u, v): 1, or 1/2 where v ties (lax.max's rule)."""
  return jnp.where(u == z, jnp.where(v == z, 0.5, 1.0), 0.0).astype(z.dtype)


def _max_2x2_stride1_bwd(x, g):
  # Every window's quantities on a grid one window wider on each side, where the zero-padded g
  # sends nothing: each corner's share is then a slice of that grid, and all four shares sum in
  # one pass. (Padding each share into place instead made four full-resolution passes that XLA
  # would not fuse: the `cnn` step 1.05-1.08x slower, benchmarks/RESULTS.md.)
  h, w = x.shape[1:3]
  xx = jnp.pad(x, ((0, 0), (1, 2), (1, 2), (0, 0)), mode="edge")  # windows -1..h and -1..w
  a, b = xx[:, :h + 2, :w + 2], xx[:, 1:, :w + 2]
  c, d = xx[:, :h + 2, 1:], xx[:, 1:, 1:]
  p, q = jnp.maximum(a, b), jnp.maximum(c, d)
  m = jnp.maximum(p, q)
  gg = jnp.pad(g, ((0, 0), (1, 1), (1, 1), (0, 0)))
  gp, gq = gg * _tie_weight(p, m, q), gg * _tie_weight(q, m, p)
  # Window (i, j) sends a to (i, j), b to (i + 1, j), c to (i, j + 1) and d to (i + 1, j + 1) of the
  # padded input (grid index = window + 1), summed as autodiff sums them.
  g_xp = (((gq * _tie_weight(d, q, c))[:, :h + 1, :w + 1] + (gq * _tie_weight(c, q, d))[:, 1:, :w + 1])
          + (gp * _tie_weight(b, p, a))[:, :h + 1, 1:]) + (gp * _tie_weight(a, p, b))[:, 1:, 1:]
  # The edge padding's transpose: the copied last column, then the copied last row, added back.
  pad = lambda t, rows, cols: jnp.pad(t, ((0, 0), rows, cols, (0, 0)))
  g_x = g_xp[:, :, :w] + pad(g_xp[:, :, w:], (0, 0), (w - 1, 0))
  return (g_x[:, :h] + pad(g_x[:, h:], (h - 1, 0), (0, 0)),)


max_2x2_stride1.defvjp(lambda x: (max_2x2_stride1(x), x), _max_2x2_stride1_bwd)


def _is_plain_nhwc_conv(lhs, rhs, window_strides, lhs_dilation, rhs_dilation, dimension_numbers,
                        feature_group_count, batch_group_count) -> bool:
  nhwc = lax.conv_dimension_numbers(lhs.shape, rhs.shape, ("NHWC", "HWIO", "NHWC"))
  return (lhs.ndim == 4 and all(s == 1 for s in window_strides)
          and all(d == 1 for d in (lhs_dilation or (1, 1))) and all(d == 1 for d in (rhs_dilation or (1, 1)))
          and lax.conv_dimension_numbers(lhs.shape, rhs.shape, dimension_numbers) == nhwc
          and feature_group_count == 1 and batch_group_count == 1)


def _shifted_copies(x, pads, kh: int, kw: int) -> list[list[jnp.ndarray]]:
  """copies[i][j]: the padded input shifted by kernel tap (i, j), the output's size ([N, H', W', Cin])."""
  xp = jnp.pad(x, ((0, 0), tuple(pads[0]), tuple(pads[1]), (0, 0)))
  h, w = xp.shape[1] - kh + 1, xp.shape[2] - kw + 1
  return [[xp[:, i:i + h, j:j + w, :] for j in range(kw)] for i in range(kh)]


def _kernel_grad_by_rows(x, g, pads, kh: int, kw: int):
  """d loss / d kernel of a stride-1 NHWC conv: one matmul per kernel row.

  For kernel row i, the kw shifted copies of the padded input are put side by side
  ([N*H*W, kw*Cin]) and contracted with the output gradient ([N*H*W, Cout]) over all
  pixels. With one input channel, all kh*kw copies stacked ([kh*kw, N*H*W]) make a
  single matmul that needs no transposed copy.
  """
  copies = _shifted_copies(x, pads, kh, kw)
  cin, cout = x.shape[-1], g.shape[-1]
  g2 = g.reshape(-1, cout)
  if cin == 1:
    taps = jnp.stack([c[..., 0] for row in copies for c in row])
    return (taps.reshape(kh * kw, -1) @ g2).reshape(kh, kw, 1, cout)
  return jnp.stack([(jnp.concatenate(row, axis=-1).reshape(-1, kw * cin).T @ g2).reshape(kw, cin, cout)
                    for row in copies])


def _conv_one_channel_by_taps(x, k, pads):
  """A stride-1 NHWC conv of a one-channel input as kh*kw broadcast multiply-adds.

  Elementwise, so XLA fuses it into whatever reads the output (in the train step, the
  bias add and BatchNorm's passes read the 4 MB input instead of a 134 MB activation).
  """
  kh, kw = k.shape[:2]
  copies = _shifted_copies(x, pads, kh, kw)
  out = None
  for i in range(kh):
    for j in range(kw):
      tap = copies[i][j] * k[i, j, 0]
      out = tap if out is None else out + tap
  return out


def conv_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation=None, rhs_dilation=None,
                         dimension_numbers=None, feature_group_count=1, batch_group_count=1,
                         precision=None, preferred_element_type=None):
  """`lax.conv_general_dilated` with faster gradient passes on CPU; same math.

  Pass as `nn.Conv(..., conv_general_dilated=layers.conv_general_dilated)` (or use
  `layers.Conv`). Only stride-1 NHWC convs on the CPU change, and only under
  differentiation: a call that is not differentiated (inference) is the lax op.

  - Where the train step leaves convolutions to YNNPACK (`XRAY_JAX_CPU_CONV=ynnpack`, see
    compile_options): the kernel gradient as one matmul per kernel row, since YNNPACK runs
    it on one thread (`refcnn` 1.17x with them there). With XLA's own (Eigen)
    convolutions, the CPU default, Eigen's kernel gradient is the faster (`refcnn` 1.16x
    without the matmuls), and so are cuDNN's on GPU.
  - Under the default, a float32 input with one channel (the first layer): the forward
    pass as kh*kw multiply-adds, which XLA fuses into the passes after it, and the kernel
    gradient as one matmul of the kh*kw shifted copies of the input (4 MB each) with the
    output gradient, which skips the transposed copy of that gradient XLA makes for its
    own (`refcnn` 1.06x). Not in inference: there YNNPACK fuses the layers after the
    convolution and the multiply-adds get materialised (0.72x).
  The input gradient is always XLA's. Decided when traced, by this process's settings;
  benchmarks/RESULTS.md has the measurements.
  """
  ref = functools.partial(
      lax.conv_general_dilated, window_strides=window_strides, padding=padding,
      lhs_dilation=lhs_dilation, rhs_dilation=rhs_dilation, dimension_numbers=dimension_numbers,
      feature_group_count=feature_group_count, batch_group_count=batch_group_count,
      precision=precision, preferred_element_type=preferred_element_type)
  if jax.default_backend() != "cpu" or not _is_plain_nhwc_conv(
      lhs, rhs, window_strides, lhs_dilation, rhs_dilation, dimension_numbers,
      feature_group_count, batch_group_count):
    return ref(lhs, rhs)
  ynnpack = compile_options.ynnpack_convolutions()
  one_channel = (not ynnpack and lhs.shape[-1] == 1 and lhs.dtype == rhs.dtype == jnp.float32
                 and preferred_element_type in (None, jnp.float32))
  if not (ynnpack or one_channel):
    return ref(lhs, rhs)
  kh, kw = rhs.shape[:2]
  pads = (lax.padtype_to_pads(lhs.shape[1:3], (kh, kw), window_strides, padding)
          if isinstance(padding, str) else padding)

  @jax.custom_vjp
  def conv(x, k):
    return ref(x, k)

  def conv_fwd(x, k):
    return (_conv_one_channel_by_taps(x, k, pads) if one_channel else ref(x, k)), (x, k)

  def conv_bwd(residuals, g):
    x, k = residuals
    dx = jax.vjp(lambda x: ref(x, k), x)[1](g)[0]  # XLA's own input gradient
    return dx, _kernel_grad_by_rows(x, g.astype(x.dtype), pads, kh, kw).astype(k.dtype)

  conv.defvjp(conv_fwd, conv_bwd)
  return conv(lhs, rhs)


# nn.Conv with the kernel gradient above where it pays: same parameters and names as nn.Conv.
Conv = functools.partial(nn.Conv, conv_general_dilated=conv_general_dilated)
