import jax
import jax.numpy as jnp
import numpy as np

from xray_jax import augment

CFG = augment.AugmentConfig()


def _images(n=4, size=32):
  return jax.random.uniform(jax.random.key(0), (n, size, size, 1))


def test_deterministic_per_key_and_different_across_keys():
  x = _images()
  a = augment.augment_batch(jax.random.key(7), x, CFG)
  b = augment.augment_batch(jax.random.key(7), x, CFG)
  c = augment.augment_batch(jax.random.key(8), x, CFG)
  np.testing.assert_array_equal(a, b)
  assert not np.allclose(a, c)
  # Each image of a batch draws its own transform.
  same_image = augment.augment_batch(jax.random.key(7), jnp.stack([x[0], x[0]]), CFG)
  assert not np.allclose(same_image[0], same_image[1])


def test_keeps_shape_dtype_and_range():
  x = _images(3, 48)
  y = jax.jit(lambda k, x: augment.augment_batch(k, x, CFG))(jax.random.key(1), x)
  assert y.shape == x.shape and y.dtype == x.dtype
  assert float(y.min()) >= 0.0 and float(y.max()) <= 1.0


def test_zero_strength_is_the_identity():
  x = _images()
  off = augment.AugmentConfig(rotate_deg=0, scale=0, shift=0, brightness=0, contrast=0, gamma=0)
  y = augment.augment_batch(jax.random.key(3), x, off)
  np.testing.assert_allclose(y, x, atol=1e-6)


def test_affine_moves_content_the_way_it_says():
  img = jnp.zeros((9, 9, 1)).at[4, 6, 0].set(1.0)  # a dot right of centre
  rotated = augment.affine(img, angle=jnp.deg2rad(90.0), scale=1.0, shift_yx=jnp.zeros(2))
  shifted = augment.affine(img, angle=0.0, scale=1.0, shift_yx=jnp.array([2.0, 0.0]))
  # A positive angle turns content clockwise on screen (rows go down): right of centre -> below.
  assert np.unravel_index(np.argmax(rotated[..., 0]), (9, 9)) == (6, 4)
  assert np.unravel_index(np.argmax(shifted[..., 0]), (9, 9)) == (6, 6)
