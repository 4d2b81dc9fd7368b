import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.ndimage

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


@pytest.mark.parametrize("sigma", [0.7, 1.3, 2.0])
def test_gaussian_blur_equals_scipy(sigma):
  x = np.asarray(_images(1, 40)[0])
  want = scipy.ndimage.gaussian_filter(x[..., 0], sigma, mode="nearest", truncate=6 / sigma)
  got = augment.gaussian_blur(jnp.asarray(x), jnp.float32(sigma))[..., 0]
  np.testing.assert_allclose(got, want, atol=1e-5)
  np.testing.assert_array_equal(augment.gaussian_blur(jnp.asarray(x), jnp.float32(0.0)), x)


def test_blur_and_noise_are_off_by_default_and_on_when_asked():
  x = _images(4, 32)
  key = jax.random.key(5)
  base = augment.augment_batch(key, x, CFG)
  assert CFG.blur == 0 and CFG.noise == 0
  noisy = augment.augment_batch(key, x, dataclasses.replace(CFG, noise=0.1))
  blurred = augment.augment_batch(key, x, dataclasses.replace(CFG, blur=2.0))
  assert float(jnp.abs(noisy - base).mean()) > 1e-3
  # Blur removes high frequencies: neighbouring pixels differ less.
  tv = lambda y: float(jnp.abs(jnp.diff(y, axis=2)).mean())
  assert tv(blurred) < tv(base)
  assert float(noisy.min()) >= 0.0 and float(noisy.max()) <= 1.0


def test_collimator_bands_cover_the_edges_and_leave_the_centre():
  x = _images(1, 20)[0]
  level = jnp.float32(0.9)
  y = augment.collimator_bands(x, jnp.array([0.1, 0.2, 0.0, 0.15]), level)
  # Top 2 rows, bottom 4, right 3 columns (pixel centres inside the band); no left band.
  np.testing.assert_array_equal(y[:2], level)
  np.testing.assert_array_equal(y[-4:], level)
  np.testing.assert_array_equal(y[:, -3:], level)
  np.testing.assert_array_equal(y[2:-4, :-3], x[2:-4, :-3])
  np.testing.assert_array_equal(augment.collimator_bands(x, jnp.zeros(4), level), x)


def test_border_is_off_by_default_and_draws_bands_only_for_some_images_when_on():
  x = _images(32, 32)
  key = jax.random.key(5)
  assert CFG.border == 0
  base = augment.augment_batch(key, x, CFG)
  on = augment.augment_batch(key, x, dataclasses.replace(CFG, border=0.5))
  changed = np.asarray(jnp.any(jnp.abs(on - base) > 1e-6, axis=(1, 2, 3)))
  assert 0 < changed.sum() < len(changed)  # a coin per image
  # With the intensity changes off (contrast works around the image mean, which bands move),
  # only edge pixels change, and each image has a flat edge row or column.
  plain = dataclasses.replace(CFG, brightness=0, contrast=0, gamma=0)
  unbanded = augment.augment_batch(key, x, plain)
  always = augment.augment_batch(key, x, dataclasses.replace(plain, border=1.0))
  c = 32 // 2
  np.testing.assert_allclose(always[:, c - 4:c + 4, c - 4:c + 4], unbanded[:, c - 4:c + 4, c - 4:c + 4], atol=1e-6)
  flat = lambda img: [float(jnp.ptp(e)) for e in (img[0], img[-1], img[:, 0], img[:, -1])]
  assert all(min(flat(img)) < 1e-6 for img in always)


def test_erase_rectangle_replaces_exactly_the_pixels_inside():
  x = _images(1, 20)[0]
  fill = jnp.full_like(x, 0.5)
  y = augment.erase_rectangle(x, jnp.array([0.1, 0.5]), jnp.array([0.3, 0.25]), fill)
  # Rows 2..7 and columns 10..14: the pixel centres in [0.1, 0.4) x [0.5, 0.75).
  inside = np.zeros((20, 20, 1), bool)
  inside[2:8, 10:15] = True
  np.testing.assert_array_equal(np.asarray(y)[inside], 0.5)
  np.testing.assert_array_equal(np.asarray(y)[~inside], np.asarray(x)[~inside])
  np.testing.assert_array_equal(augment.erase_rectangle(x, jnp.array([0.3, 0.3]), jnp.zeros(2), fill), x)


def test_erase_is_off_by_default_and_draws_one_rectangle_in_the_sizes_it_says_for_some_images():
  n, size = 64, 40
  x = _images(n, size)
  key = jax.random.key(5)
  assert CFG.erase == 0
  base = augment.augment_batch(key, x, CFG)
  # Erasing comes last and draws its own keys: the other transforms are those of the run without it.
  on = augment.augment_batch(key, x, dataclasses.replace(CFG, erase=0.5))
  changed = np.asarray(jnp.abs(on - base) > 1e-6)[..., 0]
  erased = changed.any(axis=(1, 2))
  assert 0.25 * n < erased.sum() < 0.75 * n  # a coin per image
  lo, hi = augment.ERASE_AREA
  for mask in changed[erased]:
    rows, cols = np.nonzero(mask.any(axis=1))[0], np.nonzero(mask.any(axis=0))[0]
    box = (rows[-1] - rows[0] + 1) * (cols[-1] - cols[0] + 1)
    # The changed pixels fill one axis-aligned box (a noise draw can equal the pixel it
    # replaces only by chance), whose area is in range to within its rounding to whole pixels.
    assert mask.sum() >= 0.99 * box
    assert lo * size * size - 2 * size <= box <= hi * size * size + 2 * size
    aspect = (rows[-1] - rows[0] + 1) / (cols[-1] - cols[0] + 1)
    assert augment.ERASE_ASPECT[0] / 1.5 <= aspect <= augment.ERASE_ASPECT[1] * 1.5
  assert float(on.min()) >= 0.0 and float(on.max()) <= 1.0


def test_tta_views_keep_shape_and_the_identity_view_is_the_image():
  x = _images(2, 32)
  np.testing.assert_array_equal(augment.tta_view(x, augment.TTA_VIEWS[0]), x)
  for view in augment.TTA_VIEWS[1:]:
    y = augment.tta_view(x, view)
    assert y.shape == x.shape and float(jnp.abs(y - x).mean()) > 1e-3


def test_mixup_blends_each_image_with_a_batch_partner_and_keeps_its_own_label_dominant():
  x = _images(16)
  fn = jax.jit(augment.mixup, static_argnums=2)
  mixed, partner, lam = fn(jax.random.key(5), x, 0.4)
  assert sorted(np.asarray(partner).tolist()) == list(range(16))  # a permutation of the batch
  lam = np.asarray(lam)
  assert lam.shape == (16,) and (lam >= 0.5).all() and (lam <= 1.0).all() and lam.std() > 0.01
  expected = lam[:, None, None, None] * np.asarray(x) + (1 - lam[:, None, None, None]) * np.asarray(x)[partner]
  np.testing.assert_allclose(mixed, expected, rtol=1e-6, atol=1e-7)
  np.testing.assert_array_equal(mixed, fn(jax.random.key(5), x, 0.4)[0])  # a pure function of the key
