"""Orbax checkpoints of the train state plus a small JSON record of where the run stood.

A workdir holds two managers: `checkpoints/` (the latest few, to resume a killed run)
and `best/` (the one with the best validation metric, what evaluation uses). Orbax
writes each step to a temporary folder and renames it when complete, so a save that
was killed half-way is never listed, and never restored.
"""

from __future__ import annotations

import os
from typing import Any

import jax
import orbax.checkpoint as ocp

LATEST, BEST = "checkpoints", "best"


def manager(workdir: str, kind: str, *, max_to_keep: int) -> ocp.CheckpointManager:
  return ocp.CheckpointManager(
      os.path.join(os.path.abspath(workdir), kind),
      options=ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True),
      item_names=("state", "meta"),
  )


def save(mngr: ocp.CheckpointManager, step: int, state: Any, meta: dict[str, Any]) -> None:
  mngr.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)),
            force=True)


def restore(mngr: ocp.CheckpointManager, step: int, like_state: Any) -> tuple[Any, dict[str, Any]]:
  """Restores `step` into the structure, shapes and shardings of `like_state`."""
  abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, like_state)
  restored = mngr.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract),
                                                        meta=ocp.args.JsonRestore()))
  return restored.state, dict(restored.meta)
