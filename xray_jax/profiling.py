"""Where a compiled step's time goes: a `jax.profiler` trace summed per XLA op, joined to its HLO.

    ops, wall_s = profiling.profile(one_step, steps=5, trace_dir=DIR, hlo_text=compiled.as_text())
    profiling.write_table(ops, steps=5, wall_s=wall_s, path=DIR + "/ops.md")

Each op's time is the wall time of its thunk on the thread that ran it (XLA:CPU runs a thunk
on both cores through its intra-op pool, and may run independent thunks side by side, so the
per-op sum can exceed the step). XLA's own convolutions run asynchronously on several cores:
their thunks return at once and their time lands on the ops beside them, so only a trace
confined to one core (`taskset -c 0`) gives every op its own time. An op's bytes are its
operands' and result's sizes in the compiled program: a lower bound on its memory traffic, and
what an elementwise pass moves.
Traced steps run slower than untraced ones (benchmarks/RESULTS.md saw up to 2.8x for
thunks of microseconds), so read the shares, not the absolute times.
"""

from __future__ import annotations

import dataclasses
import glob
import gzip
import json
import os
import re
import time
from collections.abc import Callable

import jax

_DTYPE_BYTES = {"pred": 1, "s8": 1, "u8": 1, "s16": 2, "u16": 2, "f16": 2, "bf16": 2, "s32": 4, "u32": 4,
                "f32": 4, "s64": 8, "u64": 8, "f64": 8, "c64": 8, "c128": 16}
_SHAPE = re.compile(r"\b(pred|[suf]\d+|bf16|c64|c128)\[([\d,]*)\]")
# "%name = SHAPE opcode(%a, %b), attributes": the shape may be a tuple, "(f32[2], s32[])".
_INSTRUCTION = re.compile(r"^\s*(?:ROOT\s+)?%(\S+)\s*=\s*(\(.*?\)|\S+)\s+([\w-]+)\((.*?)\)(.*)$")
_COMPUTATION = re.compile(r"^(?:ENTRY\s+)?%(\S+)\s.*\{\s*$")
# Opcodes that name what a fusion mainly does, most telling first.
_KINDS = ("convolution", "dot", "reduce-window", "select-and-scatter", "scatter", "gather", "reduce", "sort",
          "transpose", "copy", "concatenate", "pad", "slice", "dynamic-update-slice")


def shape_bytes(shape: str) -> int:
  """Bytes of an HLO shape string, a tuple's elements summed ("f32[64,32]{1,0}" -> 8192)."""
  total = 0
  for dtype, dims in _SHAPE.findall(shape):
    n = 1
    for d in filter(None, dims.split(",")):
      n *= int(d)
    total += n * _DTYPE_BYTES.get(dtype, 4)
  return total


@dataclasses.dataclass
class HloOp:
  name: str
  opcode: str
  what: str  # the fusion's kind and main opcode, e.g. "ynn fusion: convolution", "loop fusion: reduce"
  shape: str
  bytes: int  # operands + result
  source: str  # the JAX op it came from (metadata op_name, without the jit(...) prefix)


def hlo_ops(hlo_text: str) -> dict[str, HloOp]:
  """The ops a compiled module runs, by name, with what each fusion does."""
  shapes: dict[str, str] = {}
  parsed: list[tuple[str, str, str, str, str, str | None]] = []
  bodies: dict[str, set[str]] = {}
  current = None
  for line in hlo_text.splitlines():
    head = _COMPUTATION.match(line)
    if head:
      current = head.group(1)
      bodies[current] = set()
      continue
    m = _INSTRUCTION.match(line)
    if not m:
      continue
    name, shape, opcode, operands, attrs = m.groups()
    shapes[name] = shape
    if current is not None:
      bodies[current].add(opcode)
    parsed.append((name, shape, opcode, operands, attrs, current))
  # A fusion's body and a reduction's combiner run inside their caller: only the entry's ops (and
  # those of loop bodies and branches) are thunks that a trace times.
  inner = set(re.findall(r"(?:calls|to_apply)=%([\w.\-]+)", hlo_text))
  ops = {}
  for name, shape, opcode, operands, attrs, computation in parsed:
    if computation in inner:
      continue
    size = shape_bytes(shape) + sum(shape_bytes(shapes.get(o, "")) for o in re.findall(r"%([\w.\-]+)", operands))
    what = opcode
    if opcode == "fusion":
      called = re.search(r"calls=%([\w.\-]+)", attrs)
      body = bodies.get(called.group(1), set()) if called else set()
      main = next((k for k in _KINDS if k in body), "elementwise")
      kind = "ynn" if "__ynn_fusion" in attrs else re.search(r"kind=k(\w+)", attrs).group(1).lower()
      what = f"{kind} fusion: {main}"
    elif opcode == "custom-call":
      target = re.search(r'custom_call_target="([^"]+)"', attrs)
      what = f"custom-call: {target.group(1) if target else '?'}"
    source = re.search(r'op_name="([^"]*)"', attrs)
    source = re.sub(r"^jit\([^)]*\)/", "", source.group(1)) if source else ""
    ops[name] = HloOp(name, opcode, what, shape.split("{")[0], size, source)
  return ops


def trace_op_times(trace_dir: str, names: set[str]) -> dict[str, tuple[int, float]]:
  """(calls, total seconds) per op of `names` in the newest perfetto trace under trace_dir."""
  paths = sorted(glob.glob(os.path.join(trace_dir, "**", "perfetto_trace.json.gz"), recursive=True),
                 key=os.path.getmtime)
  if not paths:
    raise FileNotFoundError(f"no perfetto_trace.json.gz under {trace_dir}: was the trace written?")
  with gzip.open(paths[-1], "rt") as f:
    trace = json.load(f)
  events = trace["traceEvents"] if isinstance(trace, dict) else trace
  times: dict[str, tuple[int, float]] = {}
  for e in events:
    if e.get("ph") == "X" and e.get("name") in names:
      calls, total = times.get(e["name"], (0, 0.0))
      times[e["name"]] = (calls + 1, total + e.get("dur", 0.0) / 1e6)  # microseconds in the trace
  return times


@dataclasses.dataclass
class OpTime:
  op: HloOp
  calls: int
  seconds: float  # summed over the traced steps


def profile(call: Callable[[], jax.Array], steps: int, trace_dir: str, hlo_text: str) -> tuple[list[OpTime], float]:
  """Traces `steps` calls of a warmed-up `call`; its ops by time, largest first, and the traced wall seconds."""
  ops = hlo_ops(hlo_text)
  os.makedirs(trace_dir, exist_ok=True)
  with jax.profiler.trace(trace_dir, create_perfetto_trace=True):
    t = time.perf_counter()
    for _ in range(steps):
      jax.block_until_ready(call())
    wall_s = time.perf_counter() - t
  times = trace_op_times(trace_dir, set(ops))
  if not times:
    raise RuntimeError(f"the trace under {trace_dir} names none of the compiled program's ops: "
                       "was `hlo_text` the program that `call` runs?")
  rows = [OpTime(ops[n], c, s) for n, (c, s) in times.items()]
  return sorted(rows, key=lambda r: -r.seconds), wall_s


def write_table(rows: list[OpTime], steps: int, wall_s: float, path: str) -> None:
  """A Markdown table of every timed op per step, with its share and the GB/s its bytes imply."""
  total = sum(r.seconds for r in rows)
  lines = [f"{steps} traced steps, {1e3 * wall_s / steps:.1f} ms wall per step, "
           f"{1e3 * total / steps:.1f} ms of op time per step.", "",
           "| op | what | result shape | calls/step | ms/step | share | GB/s (operands + result) | from |",
           "|---|---|---|---|---|---|---|---|"]
  for r in rows:
    gbs = r.op.bytes * r.calls / r.seconds / 1e9 if r.seconds else 0.0
    lines.append(f"| {r.op.name} | {r.op.what} | {r.op.shape} | {r.calls / steps:g} | "
                 f"{1e3 * r.seconds / steps:.2f} | {r.seconds / total:.3f} | {gbs:.1f} | {r.op.source} |")
  with open(path, "w") as f:
    f.write("\n".join(lines) + "\n")


def shares_by_kind(rows: list[OpTime]) -> dict[str, float]:
  """Each kind of op's share of the op time ("ynn fusion: convolution": 0.41, ...), largest first."""
  total = sum(r.seconds for r in rows) or 1.0
  shares: dict[str, float] = {}
  for r in rows:
    shares[r.op.what] = shares.get(r.op.what, 0.0) + r.seconds / total
  return dict(sorted(shares.items(), key=lambda kv: -kv[1]))


def summary(rows: list[OpTime], steps: int, wall_s: float, top: int = 8) -> dict:
  """The figures of a profile for a JSON row: wall and op ms per step, shares by kind, the largest ops."""
  return {"step_ms": round(1e3 * wall_s / steps, 1),
          "op_ms_per_step": round(1e3 * sum(r.seconds for r in rows) / steps, 1),
          "share_by_kind": {k: round(v, 3) for k, v in shares_by_kind(rows).items()},
          "top_ops": [[r.op.name, r.op.what, round(1e3 * r.seconds / steps, 2)] for r in rows[:top]]}
