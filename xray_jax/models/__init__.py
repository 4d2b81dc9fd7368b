"""Model registry: `--model=NAME` imports `xray_jax/models/NAME.py` and uses its `Model`.

A model file exposes `Model(nn.Module)` with a `num_classes` field, called as
`model(images_BxHxWx1, train=bool)` on float images in [0, 1] and returning logits
[B, num_classes]. Dropping such a file here is the whole job of adding an architecture.
A model that also has a `dtype` field (the compute dtype of its layers) supports
`--dtype=bfloat16`; parameters stay float32 either way.
"""

from __future__ import annotations

import importlib
import pkgutil

import flax.linen as nn
import jax.numpy as jnp

from xray_jax.errors import UsageError


def available() -> list[str]:
  """Names of the model files in this folder."""
  return sorted(m.name for m in pkgutil.iter_modules(__path__) if not m.name.startswith("_"))


def get_model(name: str, *, num_classes: int = 2, dtype: str = "float32", **kwargs) -> nn.Module:
  known = available()
  if name not in known:
    raise UsageError(f"Unknown --model={name!r}; known models: {', '.join(known)}. "
                     f"To add one, create xray_jax/models/{name}.py exposing `Model`.")
  module = importlib.import_module(f"{__name__}.{name}")
  if not hasattr(module, "Model"):
    raise UsageError(f"xray_jax/models/{name}.py defines no `Model` class.")
  if dtype != "float32":
    if "dtype" not in getattr(module.Model, "__dataclass_fields__", {}):
      raise UsageError(f"--model={name} has no `dtype` field, so it runs in float32 only; drop "
                       f"--dtype={dtype} or add `dtype: Any = jnp.float32` to its Model and layers.")
    kwargs["dtype"] = jnp.dtype(dtype)
  return module.Model(num_classes=num_classes, **kwargs)
