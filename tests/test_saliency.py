"""Saliency sanity: maps follow what the model learned, and the region the label depends on."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from xray_jax import learning
from xray_jax import models
from xray_jax import saliency

SIZE = 64
REGION = (slice(16, 32), slice(16, 32))  # one Grad-CAM cell of the CNN at 64 px: 6% of the image


def _synthetic(n, seed):
  """Noise everywhere; PNEUMONIA images (label 1) have a brighter patch in REGION only."""
  rng = np.random.default_rng(seed)
  x = rng.uniform(0.2, 0.8, (n, SIZE, SIZE, 1))
  y = rng.integers(0, 2, n).astype(np.int32)
  x[y == 1, REGION[0], REGION[1]] += 0.25
  return np.clip(np.rint(x * 255), 0, 255).astype(np.uint8), y


@functools.lru_cache(maxsize=None)
def _trained(model_name):
  config = learning.TrainConfig(model=model_name, image_size=SIZE)
  model = models.get_model(model_name)
  state = learning.create_train_state(config, model, jax.random.key(0), lambda _: 1e-3)
  step = jax.jit(functools.partial(learning.train_step, class_weights=jnp.ones(2), augment_config=None))
  for i in range(80):
    x, y = _synthetic(32, i)
    state, _ = step(state, {"image": x, "label": y}, jax.random.key(1))
  x, y = _synthetic(200, 999)
  acc = float(np.mean(np.asarray(learning.eval_step(state, jnp.asarray(x))).argmax(1) == y))
  assert acc > 0.95, f"{model_name} did not learn the synthetic task ({acc:.2f})"
  return model, {"params": state.params, "batch_stats": state.batch_stats}


def _maps(model_name, method, variables=None):
  model, trained = _trained(model_name)
  x, y = _synthetic(40, 12345)
  x = jnp.asarray(x[y == 1], jnp.float32) / 255.0
  return np.asarray(saliency.METHODS[method](model, variables or trained, x))


def _spearman(a, b):
  ra, rb = (np.argsort(np.argsort(v.ravel())) for v in (a, b))
  return float(np.corrcoef(ra, rb)[0, 1])


def _enrichment(maps):
  """Share of map mass in REGION over REGION's share of pixels (1.0: the map ignores it)."""
  inside = maps[:, REGION[0], REGION[1]].sum(axis=(1, 2)) / maps.sum(axis=(1, 2))
  return float(np.median(inside)) / (16 * 16 / SIZE**2)


def _peaks_in_region(maps, margin=4):
  rows, cols = range(REGION[0].start - margin, REGION[0].stop + margin), range(
      REGION[1].start - margin, REGION[1].stop + margin)
  peaks = [np.unravel_index(np.argmax(m), m.shape) for m in maps]
  return float(np.mean([r in rows and c in cols for r, c in peaks]))


# Measured on this task (2026-11-22): Grad-CAM peaks in the region for 80% of images (0% with
# random weights) but spreads its mass, as its 4x4 cells are upsampled (enrichment 2.1);
# integrated gradients enrich the region 4.6x (CNN) and 7.9x (MLP).
@pytest.mark.parametrize("model_name,method,min_enrichment", [
    ("cnn", "grad_cam", 1.5), ("cnn", "integrated_gradients", 3.0), ("mlp", "integrated_gradients", 3.0)])
def test_saliency_goes_to_the_region_the_label_depends_on(model_name, method, min_enrichment):
  maps = _maps(model_name, method)
  assert maps.shape[1:] == (SIZE, SIZE) and maps.min() >= 0 and maps.max() <= 1
  assert _peaks_in_region(maps) >= 0.7
  assert _enrichment(maps) >= min_enrichment


@pytest.mark.parametrize("model_name,method", [("cnn", "grad_cam"), ("cnn", "integrated_gradients"),
                                               ("mlp", "integrated_gradients")])
def test_maps_of_randomised_weights_differ_from_the_trained_models(model_name, method):
  """Adebayo et al. 2018: a method whose maps survive randomising the weights explains the
  input, not the model. Measured rank correlations trained vs random: 0.58 (Grad-CAM, whose
  smooth upsampled maps correlate by shape alone), 0.26 and 0.19 (integrated gradients)."""
  model, trained = _trained(model_name)
  random_vars = model.init(jax.random.key(42), jnp.zeros((1, SIZE, SIZE, 1)), train=False)
  random_vars = {k: v for k, v in random_vars.items() if k != "perturbations"}
  a, b = _maps(model_name, method), _maps(model_name, method, random_vars)
  correlation = np.median([_spearman(x, y) for x, y in zip(a, b)])
  assert correlation < (0.7 if method == "grad_cam" else 0.4)
  if method == "grad_cam":  # its correlation is weak evidence: check where the maps peak
    assert _peaks_in_region(a) - _peaks_in_region(b) >= 0.5


def test_grad_cam_needs_a_marked_block():
  model, variables = _trained("mlp")
  assert not saliency.supports_grad_cam(model, SIZE) and saliency.supports_grad_cam(models.get_model("cnn"), SIZE)
  with pytest.raises(ValueError, match="integrated_gradients"):
    saliency.grad_cam(model, variables, jnp.zeros((1, SIZE, SIZE, 1)))
