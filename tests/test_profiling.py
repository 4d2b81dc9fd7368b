"""The per-op profile: HLO parsed from a real compiled program, times from a real jax.profiler trace."""

import jax
import jax.numpy as jnp
import pytest

from xray_jax import profiling


def test_shape_bytes_counts_every_element_of_arrays_and_tuples():
  assert profiling.shape_bytes("f32[64,32]{1,0}") == 64 * 32 * 4
  assert profiling.shape_bytes("(bf16[3,5], s32[], pred[7])") == 3 * 5 * 2 + 4 + 7
  assert profiling.shape_bytes("u8[2,128,128,1]{3,2,1,0}") == 2 * 128 * 128


def _matmul_then_add():
  f = jax.jit(lambda a, b: jnp.tanh(a @ b).sum(0) + 1.0)
  a = jax.random.normal(jax.random.key(0), (512, 512))
  compiled = f.lower(a, a).compile()
  return (lambda: compiled(a, a)), compiled.as_text()


def test_hlo_ops_names_each_instruction_with_what_its_fusion_does_and_its_bytes():
  _, text = _matmul_then_add()
  ops = profiling.hlo_ops(text)
  assert all(f"%{name} " in text for name in ops)
  # However XLA fuses it, one op holds the matmul and reads both 512x512 operands.
  dots = [op for op in ops.values() if "dot" in op.what]
  assert len(dots) == 1 and dots[0].bytes >= 2 * 512 * 512 * 4
  assert ops["a.1"].opcode == "parameter" and ops["a.1"].shape == "f32[512,512]"


def test_profile_times_the_ops_of_a_traced_program_and_the_matmul_leads(tmp_path):
  call, text = _matmul_then_add()
  call().block_until_ready()
  rows, wall_s = profiling.profile(call, 3, str(tmp_path / "trace"), text)
  assert wall_s > 0 and all(r.calls == 3 and r.seconds > 0 for r in rows)
  assert "dot" in rows[0].op.what  # 268 MFLOP against an add of 512 numbers
  shares = profiling.shares_by_kind(rows)
  assert abs(sum(shares.values()) - 1) < 1e-9 and list(shares)[0] == rows[0].op.what
  profiling.write_table(rows, 3, wall_s, str(tmp_path / "ops.md"))
  table = (tmp_path / "ops.md").read_text()
  assert f"| {rows[0].op.name} | {rows[0].op.what} |" in table and table.count("\n| ") == len(rows) + 1


def test_profile_of_another_program_is_a_clear_error(tmp_path):
  call, _ = _matmul_then_add()
  other = jax.jit(lambda x: jnp.sin(x) * 3).lower(jnp.ones(8)).compile().as_text()
  with pytest.raises(RuntimeError, match="names none of the compiled program's ops"):
    profiling.profile(call, 1, str(tmp_path / "trace"), other)
