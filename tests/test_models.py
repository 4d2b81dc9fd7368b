import functools
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from xray_jax import models
from xray_jax.errors import UsageError

# Pinned so that an accidental architecture change shows up as a failing test.
PARAM_COUNTS = {"cnn": 1_179_986, "cnn_blurpool": 1_179_986, "cnn_blurpool_late": 1_179_986, "cnn_dropout": 1_179_986,
                "cnn_gem": 1_179_987, "cnn_gn": 1_179_986, "cnn_narrow": 664_238,
                "cnn_res": 1_224_514, "cnn_std": 1_179_986,
                "cnn_rank_centre": 1_179_986, "cnn_std_centre": 1_179_986, "cnn_wide": 1_842_902, "mlp": 8_455_042, "refcnn": 389_314}


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
  with pytest.raises(UsageError, match="known models: cnn, cnn_blurpool, cnn_blurpool_late, cnn_dropout, cnn_gem, cnn_gn, cnn_narrow, cnn_rank_centre, cnn_res, cnn_std, cnn_std_centre, cnn_wide, mlp, refcnn"):
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
  # A model without a `dtype` field runs in float32 only, and says so.
  with pytest.raises(UsageError, match="no `dtype` field"):
    models.get_model("tiny", dtype="bfloat16")


@pytest.mark.parametrize("name", sorted(PARAM_COUNTS))
def test_bfloat16_compute_keeps_float32_parameters(name):
  f32, bf16 = models.get_model(name), models.get_model(name, dtype="bfloat16")
  variables = _init(f32, 64)
  assert jax.tree.structure(_init(bf16, 64)) == jax.tree.structure(variables)
  assert all(v.dtype == jnp.float32 for v in jax.tree.leaves(_init(bf16, 64)))
  x = jax.random.uniform(jax.random.key(1), (4, 64, 64, 1))
  got = bf16.apply(variables, x, train=False)
  assert got.dtype == jnp.bfloat16
  # Same function to bfloat16's 8 bits of mantissa.
  want = f32.apply(variables, x, train=False)
  np.testing.assert_allclose(got.astype(jnp.float32), want, atol=0.05 * float(jnp.abs(want).max()) + 1e-3)


@pytest.mark.parametrize("name,base,num,den", [("cnn_narrow", "cnn", 3, 4), ("cnn_wide", "cnn_std_centre", 5, 4)])
def test_width_variants_change_only_the_widths(name, base, num, den):
  """The subclass changes only the widths: same layer names, kernels num/den as wide."""
  ref = _init(models.get_model(base), 64)["params"]
  got = _init(models.get_model(name), 64)["params"]
  assert jax.tree.structure(ref) == jax.tree.structure(got)
  for r, g in zip(jax.tree.leaves(ref), jax.tree.leaves(got)):
    assert g.shape == tuple(d if d in (1, 2, 3) else d * num // den for d in r.shape)
  assert type(models.get_model(name)).__mro__[1] is type(models.get_model(base))


def test_cnn_dropout_is_cnn_with_only_a_higher_dropout_rate():
  cnn, dropout = models.get_model("cnn"), models.get_model("cnn_dropout")
  assert (cnn.dropout, dropout.dropout) == (0.3, 0.5)
  variables = _init(cnn, 64)
  assert jax.tree.structure(variables) == jax.tree.structure(_init(dropout, 64))
  x = jax.random.uniform(jax.random.key(1), (4, 64, 64, 1))
  np.testing.assert_array_equal(cnn.apply(variables, x, train=False), dropout.apply(variables, x, train=False))
  train = lambda m: m.apply(variables, x, train=True, rngs={"dropout": jax.random.key(2)}, mutable=["batch_stats"])[0]
  assert not np.allclose(train(cnn), train(dropout))


def test_cnn_res_has_the_convs_of_cnn_plus_a_projection_per_stage():
  plain = _init(models.get_model("cnn"), 64)["params"]
  res = _init(models.get_model("cnn_res"), 64)["params"]
  for i in range(5):
    stage = res[f"ResStage_{i}"]
    assert stage["ConvBN_0"]["Conv_0"]["kernel"].shape == plain[f"ConvBN_{2 * i}"]["Conv_0"]["kernel"].shape
    assert stage["Conv_0"]["kernel"].shape == plain[f"ConvBN_{2 * i + 1}"]["Conv_0"]["kernel"].shape
    c_in, c_out = stage["proj"]["kernel"].shape[2:]
    assert stage["proj"]["kernel"].shape == (1, 1, c_in, c_out)
  assert res["Dense_0"]["kernel"].shape == plain["Dense_0"]["kernel"].shape


def test_cnn_res_stage_starts_as_its_shortcut_then_adds_the_conv_branch():
  """The zero-initialised BatchNorm scale mutes the branch at first; training can turn it on."""
  from xray_jax.models import cnn_res
  stage = cnn_res.ResStage(8)
  x = jax.random.normal(jax.random.key(0), (2, 16, 16, 4))
  variables = stage.init(jax.random.key(1), x, train=False)
  params = variables["params"]
  # Fresh BatchNorm in inference: mean 0, variance 1, scale 1, bias 0.
  shortcut = jax.nn.relu(x @ params["proj"]["kernel"][0, 0] / np.sqrt(1 + 1e-5))
  np.testing.assert_allclose(stage.apply(variables, x, train=False), shortcut, rtol=1e-5, atol=1e-5)
  params = {**params, "BatchNorm_0": {**params["BatchNorm_0"], "scale": jnp.ones(8)}}
  with_branch = stage.apply({**variables, "params": params}, x, train=False)
  assert float(jnp.abs(with_branch - shortcut).max()) > 0.1


def _max_blur_pool_reference(x):
  """Zhang (2019) as written with flax and lax ops: nn.max_pool at stride 1, then the binomial
  filter as a depthwise convolution at stride 2."""
  import flax.linen as nn
  c = x.shape[-1]
  x = nn.max_pool(jnp.pad(x, ((0, 0), (0, 1), (0, 1), (0, 0)), mode="edge"), (2, 2), strides=(1, 1))
  kernel = jnp.outer(jnp.array([1.0, 2.0, 1.0]), jnp.array([1.0, 2.0, 1.0])) / 16
  kernel = jnp.tile(kernel[:, :, None, None], (1, 1, 1, c))
  return jax.lax.conv_general_dilated(jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)), mode="reflect"), kernel,
                                      (2, 2), "VALID", dimension_numbers=("NHWC", "HWIO", "NHWC"),
                                      feature_group_count=c)


# Smallest even size, non-square both ways, odd channel counts, and the first stage of the model.
@pytest.mark.parametrize("shape", [(2, 12, 16, 3), (1, 2, 2, 1), (3, 4, 10, 2), (2, 10, 4, 1), (2, 128, 128, 16)])
def test_max_blur_pool_matches_its_reference_in_values_and_gradients(shape):
  from xray_jax.models import cnn_blurpool
  x = jax.random.normal(jax.random.key(0), shape)
  got, want = cnn_blurpool.max_blur_pool_2x2(x), _max_blur_pool_reference(x)
  assert got.shape == (shape[0], shape[1] // 2, shape[2] // 2, shape[3])
  np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)
  w = jax.random.normal(jax.random.key(1), got.shape)  # a generic cotangent
  grad = lambda f: jax.grad(lambda x: jnp.sum(f(x) * w))(x)
  np.testing.assert_allclose(grad(cnn_blurpool.max_blur_pool_2x2), grad(_max_blur_pool_reference), rtol=1e-5, atol=1e-6)
  with pytest.raises(ValueError, match="even height and width"):
    cnn_blurpool.max_blur_pool_2x2(jnp.zeros((1, 7, 8, 1)))


def test_max_blur_pool_changes_less_than_max_pool_under_a_one_pixel_shift():
  """What it is for: a stride-2 max-pool's output moves with a one-pixel shift of a detailed
  input much more than the blurred one does (interior pixels, away from the wrapped edge)."""
  from xray_jax import layers
  from xray_jax.models import cnn_blurpool
  x = jax.random.uniform(jax.random.key(0), (4, 32, 32, 2))
  shifted = jnp.roll(x, 1, axis=2)
  change = lambda f: float(jnp.abs(f(x) - f(shifted))[:, 2:-2, 2:-2].mean())
  assert change(cnn_blurpool.max_blur_pool_2x2) < 0.6 * change(layers.max_pool_2x2)


def test_cnn_blurpool_is_cnn_std_centre_with_another_pool_only():
  from xray_jax.models import cnn_blurpool, cnn_std_centre
  base, blur = models.get_model("cnn_std_centre"), models.get_model("cnn_blurpool")
  variables = _init(base, 64)
  assert jax.tree.structure(variables) == jax.tree.structure(_init(blur, 64))
  assert type(blur).__mro__[1] is cnn_std_centre.Model
  x = jax.random.uniform(jax.random.key(1), (2, 64, 64, 1))
  assert not np.allclose(base.apply(variables, x, train=False), blur.apply(variables, x, train=False))
  assert type(blur).pool is not type(base).pool and cnn_blurpool.Model.block is cnn_std_centre.Model.block


def test_cnn_blurpool_late_pools_plainly_after_the_first_stage_only():
  from xray_jax import layers
  from xray_jax.models import cnn_blurpool, cnn_blurpool_late, cnn_std_centre
  late = models.get_model("cnn_blurpool_late")
  assert type(late).__mro__[1] is cnn_std_centre.Model and cnn_blurpool_late.Model.block is cnn_std_centre.Model.block
  x = jax.random.normal(jax.random.key(0), (2, 16, 16, 3))
  np.testing.assert_array_equal(late.pool(x, stage=0), layers.max_pool_2x2(x))
  for stage in range(1, 5):
    np.testing.assert_array_equal(late.pool(x, stage=stage), cnn_blurpool.max_blur_pool_2x2(x))
  # The whole model is neither parent: the same weights give a third output.
  variables = _init(late, 64)
  images = jax.random.uniform(jax.random.key(1), (2, 64, 64, 1))
  out = {name: models.get_model(name).apply(variables, images, train=False)
         for name in ("cnn_std_centre", "cnn_blurpool", "cnn_blurpool_late")}
  assert not np.allclose(out["cnn_blurpool_late"], out["cnn_std_centre"])
  assert not np.allclose(out["cnn_blurpool_late"], out["cnn_blurpool"])


def test_gem_is_the_mean_at_p_1_nears_the_max_at_large_p_and_shrinks_less_under_a_zero_border():
  from xray_jax.models import cnn_gem
  x = jax.random.uniform(jax.random.key(0), (2, 8, 8, 5), minval=0.1, maxval=3.0)
  np.testing.assert_allclose(cnn_gem.gem(x, 1.0), x.mean(axis=(1, 2)), rtol=1e-6)
  mean, gem3, gem8, peak = (x.mean(axis=(1, 2)), cnn_gem.gem(x, 3.0), cnn_gem.gem(x, 8.0), x.max(axis=(1, 2)))
  assert bool(jnp.all((mean < gem3) & (gem3 < gem8) & (gem8 <= peak)))
  # A border of zeros over a fraction f of the map (zoom-out's black frame after ReLU) scales the
  # mean by 1 - f and GeM by (1 - f)^(1/p): the dilution the model is meant to resist.
  framed = jnp.pad(x, ((0, 0), (2, 2), (2, 2), (0, 0)))  # 8x8 inside 12x12: f = 80/144
  keep = 64 / 144
  np.testing.assert_allclose(framed.mean(axis=(1, 2)), mean * keep, rtol=1e-5)
  np.testing.assert_allclose(cnn_gem.gem(framed, 3.0), gem3 * keep ** (1 / 3), rtol=1e-5)


def test_gem_gradients_stay_finite_on_a_dead_channel_at_every_allowed_p():
  from xray_jax.models import cnn_gem
  x = jnp.zeros((2, 4, 4, 3)).at[:, :, :, 0].set(0.5)  # channels 1 and 2 are zero everywhere
  for p in (1.0, cnn_gem.P_INIT, cnn_gem.P_MAX):
    value, (gx, gp) = jax.value_and_grad(lambda x, p: cnn_gem.gem(x, p).sum(), argnums=(0, 1))(x, jnp.float32(p))
    assert np.isfinite(value) and np.all(np.isfinite(gx)) and np.isfinite(gp), p


def test_cnn_gem_is_cnn_blurpool_late_with_a_learned_global_pool_only():
  from xray_jax.models import cnn_blurpool_late, cnn_gem
  late, gem_model = models.get_model("cnn_blurpool_late"), models.get_model("cnn_gem")
  assert type(gem_model).__mro__[1] is cnn_blurpool_late.Model
  assert cnn_gem.Model.block is cnn_blurpool_late.Model.block and cnn_gem.Model.pool is cnn_blurpool_late.Model.pool
  variables = _init(gem_model, 64)
  assert float(variables["params"]["gem_p"]) == cnn_gem.P_INIT
  shared = {**variables, "params": {k: v for k, v in variables["params"].items() if k != "gem_p"}}
  assert jax.tree.structure(shared) == jax.tree.structure(_init(late, 64))
  images = jax.random.uniform(jax.random.key(1), (2, 64, 64, 1))
  plain = late.apply(shared, images, train=False)
  at_p = lambda p: gem_model.apply({**variables, "params": {**variables["params"], "gem_p": jnp.float32(p)}},
                                   images, train=False)
  # At p = 1 GeM is the mean but for the EPS floor on ReLU's zeros; at P_INIT it is another model.
  np.testing.assert_allclose(at_p(1.0), plain, atol=5e-4)
  assert not np.allclose(at_p(cnn_gem.P_INIT), plain, atol=5e-3)
  # p is clipped to [1, P_MAX]: values beyond give the same output as the bounds.
  np.testing.assert_array_equal(at_p(0.2), at_p(1.0))
  np.testing.assert_array_equal(at_p(50.0), at_p(cnn_gem.P_MAX))


def test_cnn_rejects_image_size_it_cannot_pool():
  with pytest.raises(ValueError, match="divisible by 32"):
    _init(models.get_model("cnn"), 100)


def test_cnn_gn_normalises_each_image_by_itself():
  model = models.get_model("cnn_gn")
  variables = _init(model, 64)
  assert set(variables) == {"params"}  # no running statistics
  a, b, c = (jax.random.uniform(jax.random.key(i), (1, 64, 64, 1)) for i in range(3))
  for train in (False, True):  # unlike BatchNorm, training mode too: the batch's other images do not matter
    out = [model.apply(variables, jnp.concatenate([a, other]), train=train, rngs={"dropout": jax.random.key(5)})[0]
           for other in (b, c)]
    np.testing.assert_allclose(out[0], out[1], rtol=1e-5, atol=1e-6)
  bn = models.get_model("cnn")
  bn_vars = _init(bn, 64)
  out = [bn.apply(bn_vars, jnp.concatenate([a, other]), train=True, mutable=["batch_stats"],
                  rngs={"dropout": jax.random.key(5)})[0][0] for other in (b, c)]
  assert not np.allclose(out[0], out[1], rtol=1e-5, atol=1e-6)  # the contrast that makes the test mean something


def test_cnn_std_ignores_affine_changes_of_intensity_and_is_cnn_on_standardised_images():
  from xray_jax.models import cnn_std
  model, plain = models.get_model("cnn_std"), models.get_model("cnn")
  variables = _init(model, 64)
  assert jax.tree.structure(variables) == jax.tree.structure(_init(plain, 64))
  x = jax.random.uniform(jax.random.key(1), (3, 64, 64, 1), minval=0.2, maxval=0.8)
  out = model.apply(variables, x, train=False)
  flatter_brighter = x * 0.6 + 0.3  # stays inside [0, 1]: no clipping
  np.testing.assert_allclose(model.apply(variables, flatter_brighter, train=False), out, rtol=1e-4, atol=1e-5)
  assert not np.allclose(plain.apply(variables, flatter_brighter, train=False), plain.apply(variables, x, train=False),
                         rtol=1e-4, atol=1e-5)  # what the standardisation takes away
  z = (x - x.mean(axis=(1, 2, 3), keepdims=True)) / x.std(axis=(1, 2, 3), keepdims=True)
  np.testing.assert_allclose(plain.apply(variables, z, train=False), out, rtol=1e-5, atol=1e-6)
  blank = model.apply(variables, jnp.full((1, 64, 64, 1), 0.5), train=False)
  assert np.isfinite(np.asarray(blank)).all()
  assert float(cnn_std.standardise(jnp.full((1, 4, 4, 1), 0.5)).max()) == 0.0


def test_cnn_std_centre_takes_its_statistics_from_the_central_square_only():
  from xray_jax.models import cnn_std
  assert models.get_model("cnn_std_centre").centre == 0.5 and models.get_model("cnn_std").centre == 1.0
  x = jax.random.uniform(jax.random.key(1), (2, 64, 64, 1), minval=0.2, maxval=0.8)
  framed = x.at[:, :8].set(0.0).at[:, -8:].set(0.0).at[:, :, :8].set(0.0).at[:, :, -8:].set(0.0)  # a black border
  inner = (slice(None), slice(16, 48), slice(16, 48))
  np.testing.assert_allclose(cnn_std.standardise(framed, 0.5)[inner], cnn_std.standardise(x, 0.5)[inner], rtol=1e-6)
  assert not np.allclose(cnn_std.standardise(framed)[inner], cnn_std.standardise(x)[inner], rtol=1e-3)
  centre = x[inner]
  expected = (x - centre.mean(axis=(1, 2, 3), keepdims=True)) / centre.std(axis=(1, 2, 3), keepdims=True)
  np.testing.assert_allclose(cnn_std.standardise(x, 0.5), expected, rtol=1e-5, atol=1e-6)


def test_cnn_rank_centre_ignores_monotone_changes_of_intensity_and_is_cnn_on_central_ranks():
  from xray_jax.models import cnn_rank_centre
  model, plain = models.get_model("cnn_rank_centre"), models.get_model("cnn")
  variables = _init(model, 64)
  assert jax.tree.structure(variables) == jax.tree.structure(_init(plain, 64))
  # Whole grey levels, as films are: many pixels tie.
  x = jnp.round(jax.random.uniform(jax.random.key(1), (2, 64, 64, 1), minval=0.1, maxval=0.9) * 255) / 255
  out = model.apply(variables, x, train=False)
  for changed in (x ** 1.7, 0.5 * x + 0.2, jnp.sqrt(x)):  # gamma, contrast and brightness, a tone curve
    np.testing.assert_array_equal(model.apply(variables, changed, train=False), out)
  # Each pixel's mid-rank among the central square's pixels, spread to deviation about 1 there.
  r = cnn_rank_centre.rank_transform(x)
  centre = np.asarray(x[:, 16:48, 16:48]).reshape(2, -1)
  image, row, col = 1, 5, 40  # a pixel outside the centre
  v = float(x[image, row, col, 0])
  rank = ((centre[image] < v).sum() + (centre[image] <= v).sum()) / (2 * centre.shape[1])
  np.testing.assert_allclose(r[image, row, col, 0], (rank - 0.5) * np.sqrt(12), rtol=1e-6)
  assert abs(float(r[:, 16:48, 16:48].mean())) < 0.02 and abs(float(r[:, 16:48, 16:48].std()) - 1) < 0.02
  np.testing.assert_allclose(plain.apply(variables, r, train=False), out, rtol=1e-6)
  # A black border (a film framed wider) leaves every central pixel's value unchanged.
  framed = x.at[:, :8].set(0.0).at[:, -8:].set(0.0)
  np.testing.assert_array_equal(cnn_rank_centre.rank_transform(framed)[:, 16:48, 16:48], r[:, 16:48, 16:48])
