"""hostmem.keep_freed_memory: freed buffers are reused instead of mapped anew (glibc only)."""

import os
import platform
import subprocess
import sys

import pytest

from conftest import REPO, SAMPLE_DIR
from xray_jax import hostmem

pytestmark = pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="mallopt is glibc's")

# Touches a freed 64 MiB buffer from a second thread, as XLA's worker threads reuse what
# the previous step freed; prints whether hostmem applied and the page faults of the reuse.
_PROBE = r"""
import ctypes, resource, sys, threading
from xray_jax import hostmem
if "--fake_gpu" in sys.argv:  # as if the machine had an NVIDIA device node
  hostmem.glob.glob = lambda pattern: ["/dev/nvidia0"] if "nvidia" in pattern else []
applied = hostmem.keep_freed_memory()
libc = ctypes.CDLL(None)
libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, [ctypes.c_size_t]
libc.free.argtypes = [ctypes.c_void_p]
n = 64 << 20
def touch():
  p = libc.malloc(n)
  ctypes.memset(p, 1, n)
  libc.free(p)
touch()
faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
t = threading.Thread(target=touch)
t.start(); t.join()
print(applied, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults)
"""
_PAGES = (64 << 20) // os.sysconf("SC_PAGE_SIZE")


def _user_env(**extra: str) -> dict[str, str]:
  """The environment a user has: conftest opts the suite out of hostmem, this does not."""
  env = {k: v for k, v in os.environ.items() if k not in (hostmem.OPT_OUT, "JAX_PLATFORMS")}
  return {**env, **extra}


def _probe(*args: str, **env: str) -> tuple[bool, int]:
  out = subprocess.run([sys.executable, "-c", _PROBE, *args], capture_output=True, text=True, check=True,
                       env=_user_env(**env)).stdout.split()
  return out[0] == "True", int(out[1])


def test_freed_memory_is_reused_across_threads():
  applied, faults = _probe(JAX_PLATFORMS="cpu")
  assert applied
  assert faults < _PAGES // 10  # thread stack and bookkeeping only


def test_opt_out_leaves_malloc_as_it_is():
  applied, faults = _probe(**{hostmem.OPT_OUT: "default"})
  assert not applied
  assert faults >= _PAGES * 9 // 10  # glibc maps the buffer anew and the kernel faults every page in


def test_training_with_and_without_it_gives_the_same_run(prepared_sample, tmp_path):
  """The real command line, hostmem on (a user's default) and off: the same metrics, bit for bit."""
  _, tfds_dir = prepared_sample
  logs = []
  for name, extra in (("on", {}), ("off", {hostmem.OPT_OUT: "default"})):
    env = _user_env(**extra, TF_CPP_MIN_LOG_LEVEL="3", JAX_PLATFORMS="cpu")
    wd = tmp_path / name
    r = subprocess.run([sys.executable, "-m", "xray_jax.train", "--model=cnn", "--batch_size=8",
                        "--num_steps=2", f"--data_dir={SAMPLE_DIR}", f"--tfds_data_dir={tfds_dir}", f"--workdir={wd}"],
                       cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    logs.append((wd / "metrics.jsonl").read_text())
  assert logs[0] and logs[0] == logs[1]


def test_an_accelerator_leaves_malloc_alone_unless_asked():
  applied, faults = _probe("--fake_gpu")
  assert not applied and faults >= _PAGES * 9 // 10
  applied, faults = _probe("--fake_gpu", JAX_PLATFORMS="cpu")  # the user keeps jax on the CPU
  assert applied and faults < _PAGES // 10
  applied, faults = _probe("--fake_gpu", **{hostmem.OPT_OUT: "keep_freed"})
  assert applied and faults < _PAGES // 10


def test_accelerator_visible(monkeypatch):
  nodes = []
  monkeypatch.setattr(hostmem.glob, "glob", lambda pattern: [n for n in nodes if n.startswith(pattern[:-6])])
  monkeypatch.delenv("JAX_PLATFORMS", raising=False)
  assert not hostmem.accelerator_visible()
  for node in ("/dev/nvidia0", "/dev/accel0"):
    nodes[:] = [node]
    assert hostmem.accelerator_visible(), node
  monkeypatch.setenv("JAX_PLATFORMS", "cpu")
  assert not hostmem.accelerator_visible()
  monkeypatch.setenv("JAX_PLATFORMS", "cuda,cpu")
  assert hostmem.accelerator_visible()
