"""Orbax checkpoints of the train state plus a small JSON record of where the run stood.

A workdir holds two managers: `checkpoints/` (the latest two, to resume a killed run)
and `best/` (the one with the best validation metric, what evaluation uses). Orbax
writes each step to a temporary folder and renames it when complete, so a save that was
killed half-way is never listed, and never restored. Each save also records a SHA-256 of
the state's bytes, so a checkpoint damaged later on disk is caught on restore rather than
silently resumed from.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import time
from typing import Any

from absl import logging
import jax
import numpy as np
import orbax.checkpoint as ocp

LATEST, BEST = "checkpoints", "best"
DAMAGED = "damaged_checkpoints"  # where damaged steps are moved, for a look later


class CheckpointDamagedError(RuntimeError):
  """A checkpoint on disk cannot be restored or does not match its digest."""


def manager(workdir: str, kind: str, *, max_to_keep: int) -> ocp.CheckpointManager:
  return ocp.CheckpointManager(
      os.path.join(os.path.abspath(workdir), kind),
      options=ocp.CheckpointManagerOptions(
          max_to_keep=max_to_keep, create=True,
          # Both managers save the same step at an epoch end; in a multi-process run their
          # barriers would share a name without a prefix of their own.
          multiprocessing_options=ocp.options.MultiprocessingOptions(barrier_sync_key_prefix=kind)),
      item_names=("state", "meta"),
  )


def tree_digest(tree: Any) -> str:
  """SHA-256 over every leaf's dtype, shape and bytes, in tree order."""
  h = hashlib.sha256()
  for leaf in jax.tree.leaves(jax.device_get(tree)):
    leaf = np.asarray(leaf)
    h.update(f"{leaf.dtype}{leaf.shape}".encode())
    h.update(np.ascontiguousarray(leaf).tobytes())
  return h.hexdigest()


def save(mngr: ocp.CheckpointManager, step: int, state: Any, meta: dict[str, Any]) -> None:
  """Saves a host copy of `state` in the background.

  The copy matters: the train step donates the state's buffers, and XLA reuses them
  in place while an asynchronous save may still be reading them (the digest check
  caught exactly that: checkpoints holding a mix of two steps).
  """
  host_state = jax.device_get(state)
  meta = {**meta, "state_sha256": tree_digest(host_state)}
  if step in mngr.all_steps():
    # A resumed run can reach a step saved before (best/ kept step S while checkpoints/
    # fell back to an earlier one): the newer save of that step replaces the older.
    mngr.delete(step)
  mngr.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(_stored_fields(host_state)),
                                          meta=ocp.args.JsonSave(meta)), force=True)


def _stored_fields(state: Any) -> dict[str, Any]:
  """The state's array fields by name, leaving out those that are None.

  Orbax would record a None field (TrainState.ema of a run without --ema_decay) as a key
  of its own, and then refuse every checkpoint written before that field existed; left
  out, a run without it keeps the layout checkpoints always had.
  """
  return {f.name: getattr(state, f.name) for f in dataclasses.fields(state)
          if f.metadata.get("pytree_node", True) and getattr(state, f.name) is not None}


def step_dir(mngr: ocp.CheckpointManager, step: int) -> str:
  return os.path.join(os.fspath(mngr.directory), str(step))


def restore(mngr: ocp.CheckpointManager, step: int, like_state: Any) -> tuple[Any, dict[str, Any]]:
  """Restores `step` into the structure, shapes and shardings of `like_state`.

  Raises CheckpointDamagedError, naming the folder, when it cannot be read or its bytes
  differ from the digest recorded when it was saved.
  """
  abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, _stored_fields(like_state))
  try:
    restored = mngr.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract),
                                                          meta=ocp.args.JsonRestore()))
    state, meta = like_state.replace(**restored.state), dict(restored.meta)
  except Exception as e:  # tensorstore and JSON errors of many kinds: all mean "unreadable"
    raise CheckpointDamagedError(f"{step_dir(mngr, step)} cannot be read ({type(e).__name__}: "
                                 f"{str(e)[:300]})") from e
  if meta.get("state_sha256") not in (None, tree_digest(state)):
    raise CheckpointDamagedError(f"{step_dir(mngr, step)} does not match the SHA-256 recorded when it was saved")
  return state, meta


def restore_latest_good(mngr: ocp.CheckpointManager, like_state: Any) -> tuple[Any, dict[str, Any]] | None:
  """The newest checkpoint that restores cleanly; damaged newer ones are moved aside with a warning."""
  steps = sorted(mngr.all_steps(), reverse=True)
  for i, step in enumerate(steps):
    try:
      return restore(mngr, step, like_state)
    except CheckpointDamagedError as e:
      fallback = f"falling back to {step_dir(mngr, steps[i + 1])}" if i + 1 < len(steps) else "no older one left"
      aside = os.path.join(os.path.dirname(os.fspath(mngr.directory)), DAMAGED, f"{step}-{int(time.time())}")
      logging.warning("Checkpoint %s is damaged: %s; %s. Moved it to %s.", step_dir(mngr, step), e, fallback, aside)
      os.makedirs(os.path.dirname(aside), exist_ok=True)
      os.rename(step_dir(mngr, step), aside)
      mngr.reload()
  return None
