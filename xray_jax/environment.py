"""What a run ran on, appended to WD/environment.jsonl at every start or resume of `train`.

Bit-for-bit reproduction on CPU holds only on the same software and the same kind of
machine: XLA compiles for the host's instruction set, and the convolution code it calls can
size its blocks (so its partial sums) by the caches it finds, so another host can give
another order of float sums and, ten epochs later, other weights (experiments/RESULTS.md,
idea 31). Only process 0 writes, so a multi-host run records its first host. Each line records the library
versions, the backend and devices, the CPU (model, vector extensions, caches), the compiler
options of the train step, the code's git commit and a digest of the prepared records, so two
runs that disagree can be told apart:

    python -m xray_jax.environment runs/cnn_s0 other/runs/cnn_s0     # what differs
"""

from __future__ import annotations

import glob
import hashlib
import importlib.metadata
import json
import os
import platform
import subprocess
import sys
import time
from typing import Any

from xray_jax.errors import UsageError

FILE = "environment.jsonl"
PACKAGES = ("jax", "jaxlib", "flax", "optax", "orbax-checkpoint", "tensorflow", "tensorflow-cpu",
            "tensorflow-datasets", "numpy", "pillow")
# The instruction-set extensions XLA:CPU's code generation can use; the other flags do not matter here.
_ISA_PREFIXES = ("avx", "amx", "fma", "sse4", "f16c", "bmi")
MAX_DIGEST_BYTES = 1 << 30  # larger prepared sets get sizes only: hashing them would slow every start


def versions() -> dict[str, str]:
  found = {}
  for name in PACKAGES:
    try:
      found[name] = importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
      pass
  return found


def _read(path: str) -> str:
  with open(path) as f:
    return f.read().strip()


def cpu() -> dict[str, Any]:
  """The host CPU as Linux reports it; fewer fields (or none) elsewhere."""
  info: dict[str, Any] = {"machine": platform.machine(), "logical_cpus": os.cpu_count()}
  if hasattr(os, "sched_getaffinity"):
    info["usable_cpus"] = len(os.sched_getaffinity(0))
  try:
    with open("/proc/cpuinfo") as f:
      first = f.read().split("\n\n")[0]
  except OSError:
    first = ""
  fields = dict(line.split(":", 1) for line in first.splitlines() if ":" in line)
  fields = {k.strip(): v.strip() for k, v in fields.items()}
  for key in ("vendor_id", "model name", "cpu family", "model", "stepping"):
    if key in fields:
      info[key.replace(" ", "_")] = fields[key]
  if "flags" in fields:
    info["isa"] = sorted(f for f in fields["flags"].split() if f.startswith(_ISA_PREFIXES))
  caches = {}
  for index in sorted(glob.glob("/sys/devices/system/cpu/cpu0/cache/index*")):
    try:
      level, kind, size = (_read(os.path.join(index, n)) for n in ("level", "type", "size"))
    except OSError:
      continue
    caches[f"L{level}_{kind.lower()}"] = size
  if caches:
    info["caches"] = caches
  return info


def git_commit(path: str) -> dict[str, Any]:
  """HEAD of the checkout holding `path`, and whether it had uncommitted changes; {} outside git."""
  try:
    run = lambda *a: subprocess.run(("git", "-C", path) + a, capture_output=True, text=True, timeout=10,
                                    check=True).stdout.strip()
    return {"commit": run("rev-parse", "HEAD"), "dirty": bool(run("status", "--porcelain", "--untracked-files=no"))}
  except (OSError, subprocess.SubprocessError):
    return {}


def data_digest(data_dir: str) -> dict[str, Any]:
  """A sha256 per prepared record file of what its Examples hold, in file order (sizes only past
  MAX_DIGEST_BYTES in all).

  Not the files' own bytes: TFDS writes each Example's feature map in an order that changes
  from one preparation to the next (protobuf leaves map order unspecified), so the same images
  prepared twice give other file bytes. Each Example is hashed as its deterministic
  serialisation (map keys sorted) instead, which is equal exactly when the records are.
  """
  files = sorted(glob.glob(os.path.join(data_dir, "*.tfrecord*")))
  sizes = {os.path.basename(p): os.path.getsize(p) for p in files}
  if sum(sizes.values()) > MAX_DIGEST_BYTES:
    return {"dir": data_dir, "bytes": sizes, "records_sha256": "not computed: over MAX_DIGEST_BYTES"}
  import tensorflow as tf  # pylint: disable=import-outside-toplevel  # only where data was prepared
  digests = {}
  for p in files:
    h = hashlib.sha256()
    for raw in tf.data.TFRecordDataset(p):
      canonical = tf.train.Example.FromString(raw.numpy()).SerializeToString(deterministic=True)
      h.update(len(canonical).to_bytes(8, "little") + canonical)  # the length keeps record bounds apart
    digests[os.path.basename(p)] = h.hexdigest()
  return {"dir": data_dir, "bytes": sizes, "records_sha256": digests}


def describe(*, data_dir: str | None = None, compiler_options: dict[str, str] | None = None) -> dict[str, Any]:
  """One environment.jsonl record: this process's software, machine and (if given) data."""
  import jax  # pylint: disable=import-outside-toplevel  # the CLI below compares files without it
  record: dict[str, Any] = {
      "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
      "python": sys.version.split()[0], "platform": platform.platform(), "versions": versions(),
      "backend": jax.default_backend(), "devices": sorted({d.device_kind for d in jax.devices()}),
      "process_count": jax.process_count(), "cpu": cpu(),
      "compiler_options": compiler_options or {},
      "env": {k: os.environ[k] for k in ("XLA_FLAGS", "XRAY_JAX_CPU_CONV", "TF_ENABLE_ONEDNN_OPTS")
              if k in os.environ},
      "code": git_commit(os.path.dirname(os.path.abspath(__file__))),
  }
  if data_dir:
    record["data"] = data_digest(data_dir)
  return record


def append(workdir: str, record: dict[str, Any]) -> None:
  with open(os.path.join(workdir, FILE), "a") as f:
    f.write(json.dumps(record, sort_keys=True) + "\n")


def last(workdir: str) -> dict[str, Any]:
  path = os.path.join(workdir, FILE)
  try:
    with open(path) as f:
      lines = [l for l in f if l.strip()]
  except OSError as e:
    raise UsageError(f"{path}: cannot read it ({e.strerror or e}); runs trained before environment.jsonl "
                     "existed have none.") from e
  if not lines:
    raise UsageError(f"{path} is empty: start `train` on that workdir once to record its machine.")
  return json.loads(lines[-1])


def data_version(workdir: str) -> str | None:
  """The version of the prepared data the run last started on (the last folder of its recorded data
  dir, e.g. .../max256/1.1.0), or None when it recorded none."""
  try:
    with open(os.path.join(workdir, FILE)) as f:
      records = [json.loads(l) for l in f if l.strip()]
  except OSError:
    return None
  dirs = [r["data"]["dir"] for r in records if isinstance(r.get("data"), dict) and r["data"].get("dir")]
  return os.path.basename(os.path.normpath(dirs[-1])) if dirs else None


def differences(a: dict[str, Any], b: dict[str, Any], prefix: str = "") -> list[tuple[str, Any, Any]]:
  """(key, a's value, b's value) for every leaf that differs; "time" is left out."""
  out = []
  for key in sorted(set(a) | set(b)):
    name = f"{prefix}{key}"
    if name == "time":
      continue
    va, vb = a.get(key), b.get(key)
    if isinstance(va, dict) and isinstance(vb, dict):
      out += differences(va, vb, name + ".")
    elif va != vb:
      out.append((name, va, vb))
  return out


def main(argv: list[str]) -> int:
  if len(argv) != 3:
    print(__doc__.strip().splitlines()[-1].strip(), file=sys.stderr)
    return 2
  try:
    diff = differences(last(argv[1]), last(argv[2]))
  except UsageError as e:
    print(f"error: {e}", file=sys.stderr)
    return 1
  for key, va, vb in diff:
    print(f"{key}: {va!r}  |  {vb!r}")
  if not diff:
    print("Same software, machine, options, code and data (the last start of each).")
  return 0


if __name__ == "__main__":
  sys.exit(main(sys.argv))
