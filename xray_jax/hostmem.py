"""Host memory: one malloc arena that keeps freed buffers, so XLA:CPU reuses them every step.

XLA:CPU allocates the activations and temporaries of each step anew and frees them at its
end. Under glibc's defaults every buffer above the mmap threshold (at most 32 MiB; at
batch 32, 32 x 128 x 128 x 16 float32 is 32 MiB) is a fresh mmap that free() unmaps, and
XLA's worker threads allocate from per-thread arenas that hand memory back too. So each
step the kernel maps and zeroes new pages: about 200,000 page faults per `cnn` step at batch
32 on 2 cores, a third of the CPU time spent in the kernel. With one arena, no mmap and no
trimming, once the heap has grown to fit (a few steps) each step reuses the last one's
memory: no faults per step and about 1.5x the images/s on the same machine
(benchmarks/RESULTS.md). Not always: once a smaller allocation has been cut from a large freed
block, the next large request no longer fits and the heap grows again (inference at batch
256: 1.1 GiB at about one call in fifteen). The arithmetic, and so every result, is
unchanged. The cost: the process holds on to its peak footprint, which fragmentation can
make 2-3x what the default gives, and all threads share one arena's lock, which makes XLA's
multi-threaded compiler 15-40% slower (seconds per run; the test suite, which mostly
compiles, opts out).

The entry points (train, evaluate, predict, scripts/benchmark.py) call `keep_freed_memory()`
before they import jax or TensorFlow, as glibc fixes the number of arenas when the first
threads allocate. `XRAY_JAX_MALLOC=default` in the environment leaves malloc as it is.

Where an accelerator is visible (a /dev/nvidia* or /dev/accel* device, and JAX_PLATFORMS
not set to cpu) malloc is left alone too: the step then runs on the device, and on a
16-core GPU host the single arena made XLA's compiler 4.5x slower for the same images/s
(benchmarks/RESULTS.md, "GPU"). `XRAY_JAX_MALLOC=keep_freed` applies it anyway.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import glob
import os

# mallopt parameters, from glibc's <malloc.h>.
_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4
_M_ARENA_MAX = -8
_NEVER_TRIM = -1  # mallopt(3): -1 disables trimming
OPT_OUT = "XRAY_JAX_MALLOC"


def accelerator_visible() -> bool:
  """Whether jax will likely run on a GPU or TPU here, judged without importing it."""
  platforms = os.environ.get("JAX_PLATFORMS", "").lower()
  if platforms and all(p.strip() == "cpu" for p in platforms.split(",")):
    return False
  return bool(glob.glob("/dev/nvidia[0-9]*") or glob.glob("/dev/accel[0-9]*"))


def keep_freed_memory() -> bool:
  """Set glibc's malloc to one arena, no mmap and no trimming; True if it was applied.

  False (and nothing changes) under `XRAY_JAX_MALLOC=default`, where an accelerator is
  visible (unless `XRAY_JAX_MALLOC=keep_freed`), or on C libraries without glibc's
  `mallopt` (macOS, musl). Process-wide; call once, before importing jax.
  """
  choice = os.environ.get(OPT_OUT, "").lower()
  if choice == "default" or (choice != "keep_freed" and accelerator_visible()):
    return False
  try:
    mallopt = ctypes.CDLL(ctypes.util.find_library("c")).mallopt
  except (OSError, AttributeError, TypeError):
    return False
  mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
  # mallopt returns 1 on success; the arena limit only binds threads that allocate later.
  return all([mallopt(_M_ARENA_MAX, 1), mallopt(_M_MMAP_MAX, 0), mallopt(_M_TRIM_THRESHOLD, _NEVER_TRIM)])
