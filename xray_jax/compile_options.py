"""XLA compiler options of the train step: on CPU, convolutions by XLA itself, not YNNPACK.

XLA:CPU (jaxlib 0.10) hands every convolution and dot to YNNPACK by default. For most of
this project's convolution shapes YNNPACK runs a whole convolution on one thread: on the
2-core development machine the forward convolution of `refcnn`'s second layer (64x64,
32->64, batch 64) takes 41.6 ms on one core and 42.0 ms on two, while XLA's own (Eigen)
convolution scales 1.5-1.9x; only wide layers (16x16, 128->256) get the second core.
Compiling the train step with YNNPACK kept for the rest (dots, reductions) trains `cnn`
1.24x and `refcnn` 1.06x faster there (benchmarks/RESULTS.md, "Convolutions through YNNPACK
use one core"); inference gained nothing, so the eval step keeps jaxlib's defaults. Same
convolutions; only the order of float sums differs.

Applied per jitted function (`jit` below), not through XLA_FLAGS: an option this jaxlib does
not know then fails one probe compilation here and is left out, where an unknown flag in
XLA_FLAGS would abort the process. Left out too on GPU and TPU, where XLA_FLAGS already
names the option (the user's choice wins), and under `XRAY_JAX_CPU_CONV=ynnpack`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
import functools
import os
from typing import Any

from absl import logging
import jax
import jax.numpy as jnp

OPTION = "xla_cpu_experimental_ynn_fusion_type"
# The option's list replaces jaxlib's default one, which in jaxlib 0.10 is individual dots,
# individual convolutions and reductions (BatchNorm's sums go to YNNPACK); this is it without
# convolutions, as XLA_FLAGS=--xla_cpu_experimental_ynn_fusion_type=-individual_convolution
# gives (tests/test_compile_options.py checks that dots, reductions and elementwise ops go
# where the default sends them).
NO_CONVOLUTIONS = "LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT,LIBRARY_FUSION_TYPE_REDUCE"
OPT_OUT = "XRAY_JAX_CPU_CONV"


def wanted(environ: Mapping[str, str], backend: str) -> dict[str, str]:
  """The options this environment and backend ask for, before checking that jaxlib knows them."""
  choice = environ.get(OPT_OUT, "xla").lower()
  if choice not in ("xla", "ynnpack"):
    raise ValueError(f"{OPT_OUT}={environ[OPT_OUT]!r}: use 'xla' (the default: XLA's own CPU convolutions) "
                     "or 'ynnpack' (jaxlib's default).")
  if backend != "cpu" or choice == "ynnpack" or OPTION in environ.get("XLA_FLAGS", ""):
    return {}
  return {OPTION: NO_CONVOLUTIONS}


@functools.cache
def _accepted(options: tuple[tuple[str, str], ...]) -> bool:
  try:
    jax.jit(lambda x: x + 1, compiler_options=dict(options)).lower(jnp.zeros(())).compile()
  except Exception as e:  # pylint: disable=broad-except  # jaxlib raises its own runtime error types
    logging.warning("XLA options %s not accepted by this jaxlib (%s); compiling with its defaults.",
                    dict(options), str(e).splitlines()[0])
    return False
  return True


def compiler_options() -> dict[str, str]:
  """The options for this process's default backend: those wanted, if this jaxlib accepts them."""
  options = wanted(os.environ, jax.default_backend())
  return options if options and _accepted(tuple(sorted(options.items()))) else {}


def ynnpack_convolutions() -> bool:
  """Whether a step jitted by `jit` leaves its convolutions to YNNPACK: on CPU, where the
  option is not applied (`XRAY_JAX_CPU_CONV=ynnpack`, or a jaxlib that rejects it). False
  where XLA_FLAGS sets the option: what the user's list holds is not read here.
  """
  return (jax.default_backend() == "cpu" and not compiler_options()
          and OPTION not in os.environ.get("XLA_FLAGS", ""))


def jit(fun: Callable[..., Any], **kwargs: Any) -> Any:
  """`jax.jit` with `compiler_options()`; for the steps that carry the model's convolutions."""
  return jax.jit(fun, compiler_options=compiler_options() or None, **kwargs)
