"""orbax checkpoints of the train state plus the data iterator position.

Saves are asynchronous and atomic (orbax writes to a temporary directory and
renames it when complete), keep `max_to_keep`, and restore straight into the
sharded layout. Before restoring, the checkpoint's own metadata (its tree, shapes
and dtypes, read without the arrays) is compared with the run's state: a checkpoint
written under other settings is refused with a `CheckpointError` and left as it is,
while one that cannot be read is moved aside and the one before it is used.
"""

from __future__ import annotations

import logging
import os
import time

import jax
import numpy as np
import orbax.checkpoint as ocp
from etils import epath

from kardia_jax.errors import CheckpointError

log = logging.getLogger(__name__)

# Codes the processes agree on before acting, worst first wins: a checkpoint one
# host cannot read is unusable for all, and a mismatch stops every host.
_OK, _UNREADABLE, _MISMATCH = 0, 1, 2
_SHOWN = 2  # differing paths of each kind named in a refusal


def _first_line(e: BaseException) -> str:
    return f"{type(e).__name__}: {e}".splitlines()[0][:300]


def tree_mismatch(saved, expected) -> list[str]:
    """What differs between a checkpoint's tree metadata and the abstract state:
    "path: missing in checkpoint", "path: in checkpoint, not in this run",
    "path: shape (2, 64) saved, (64,) expected" (dtypes alike). Shardings are not
    compared: orbax restores into any layout."""
    saved = ocp.tree.to_flat_dict(saved, sep="/")
    expected = ocp.tree.to_flat_dict(expected, sep="/")
    missing = [f"{k}: missing in checkpoint" for k in expected if k not in saved]
    extra = [f"{k}: in checkpoint, not in this run" for k in saved if k not in expected]
    differ = []
    for k in expected.keys() & saved.keys():
        s, e = saved[k], expected[k]
        s_shape, e_shape = tuple(getattr(s, "shape", ())), tuple(e.shape)
        if s_shape != e_shape:
            differ.append(f"{k}: shape {s_shape} saved, {e_shape} expected")
        elif getattr(s, "dtype", None) is not None and np.dtype(s.dtype) != np.dtype(e.dtype):
            differ.append(f"{k}: dtype {np.dtype(s.dtype)} saved, {np.dtype(e.dtype)} expected")
    return sorted(differ) + missing + extra


def _mismatch_message(path: str, diffs: list[str]) -> str:
    # A few paths of each kind: a scan_layers change shows both the saved per-layer
    # names and the stacked ones the run expects.
    shown = []
    for kind in ("shape", "dtype", "missing", "not in this run"):
        shown += [d for d in diffs if kind in d.split(": ", 1)[1]][:_SHOWN]
    more = len(diffs) - len(shown)
    return (
        f"checkpoint {path} does not match this run's state ({len(diffs)} differences: "
        + "; ".join(shown)
        + (f"; and {more} more" if more > 0 else "")
        + "). Was a setting that shapes the state changed (model.scan_layers, "
        "model.vocab_multiple, the model, the train.* optimizer settings)? Put the old "
        "setting back to resume, or use a new workdir; nothing was changed here"
    )


def _agree(code: int) -> int:
    """The worst code over all processes (a barrier: every process reaches it)."""
    if jax.process_count() == 1:
        return code
    from jax.experimental import multihost_utils

    codes = multihost_utils.process_allgather(np.int32(code))
    return int(np.max(codes))


class Checkpointer:
    def __init__(self, directory: str, *, max_to_keep: int = 3, async_save: bool = True):
        self.directory = os.path.abspath(directory)
        # Handlers named per item, so the step's metadata (the saved tree, shapes and
        # dtypes) can be read before any restore has been attempted.
        registry = ocp.handlers.DefaultCheckpointHandlerRegistry()
        for item, args in (
            ("state", ocp.args.StandardSave),
            ("state", ocp.args.StandardRestore),
            ("data", ocp.args.JsonSave),
            ("data", ocp.args.JsonRestore),
        ):
            registry.add(item, args)
        self._manager = ocp.CheckpointManager(
            self.directory,
            options=ocp.CheckpointManagerOptions(
                max_to_keep=max_to_keep,
                enable_async_checkpointing=async_save,
                create=True,
            ),
            handler_registry=registry,
        )

    def steps(self) -> list[int]:
        return sorted(self._manager.all_steps())

    def save(self, step: int, state, data_state: dict | None, *, wait: bool = False) -> None:
        self._manager.save(
            step,
            args=ocp.args.Composite(
                state=ocp.args.StandardSave(state),
                data=ocp.args.JsonSave(data_state or {}),
            ),
            force=True,
        )
        if wait:
            self._manager.wait_until_finished()

    def _check(self, step: int, abstract_state) -> tuple[int, str]:
        """(code, reason) from the step's metadata alone; no array is read."""
        try:
            saved = self._manager.metadata(step).item_metadata["state"]
        except Exception as e:  # noqa: BLE001 - missing or garbled metadata: unreadable
            return _UNREADABLE, _first_line(e)
        if saved is None:
            return _UNREADABLE, "no readable state item"
        diffs = tree_mismatch(saved, abstract_state)
        if diffs:
            return _MISMATCH, _mismatch_message(f"{self.directory}/{step}", diffs)
        return _OK, ""

    def _restore(self, step: int, abstract_state):
        # Through the item handlers, not the manager: the manager's restore ends in a
        # barrier that a process whose read failed never reaches, so the others would
        # wait there while it joins the next collective (seen with two processes).
        step_dir = epath.Path(self.directory) / str(step)
        handler = ocp.StandardCheckpointHandler()
        try:
            state = handler.restore(
                step_dir / "state", args=ocp.args.StandardRestore(abstract_state)
            )
        finally:
            handler.close()
        data = ocp.JsonCheckpointHandler().restore(step_dir / "data", args=ocp.args.JsonRestore())
        return state, dict(data or {})

    def _move_aside(self, step: int, reason: str | None) -> None:
        """Process 0 renames the step (kept for inspection; the resumed run will save
        this step number again) while the others wait; then all re-list the steps.
        `reason` is this process's own failure, None when only another's failed."""
        from jax.experimental import multihost_utils

        where = f"checkpoint {self.directory}/{step}"
        if jax.process_index() == 0:
            aside = os.path.join(self.directory, f"{step}.unreadable-{int(time.time())}")
            os.rename(os.path.join(self.directory, str(step)), aside)
            msg = (
                f"{where} is unreadable ({reason or 'on another process: see its log'}); "
                f"moved to {aside}; trying the previous one"
            )
        else:
            msg = f"{where} is unreadable on process {jax.process_index()} ({reason})"
        if jax.process_index() == 0 or reason:
            log.warning(msg)
            print(f"warning: {msg}", flush=True)
        multihost_utils.sync_global_devices(f"checkpoint {step} moved aside")
        self._manager.reload()

    def restore_latest(self, abstract_state):
        """(step, state, data_state) from the newest checkpoint that restores, or None.

        `abstract_state` holds `jax.ShapeDtypeStruct`s with shardings, so every
        array comes back already placed on the mesh. Raises `CheckpointError`, with
        nothing moved, when the newest readable checkpoint was written for another
        state (other shapes, dtypes or tree); and when checkpoints exist but none
        restores, rather than start again from step 0.
        """
        self._manager.wait_until_finished()
        tried = []
        for step in reversed(self.steps()):
            code, reason = self._check(step, abstract_state)
            agreed = _agree(code)
            if agreed == _MISMATCH:
                if code != _MISMATCH:
                    reason = (
                        f"checkpoint {self.directory}/{step} does not match this run's "
                        "state on another process (see its error)"
                    )
                raise CheckpointError(reason)
            restored = None
            if agreed == _OK:
                try:
                    restored = self._restore(step, abstract_state)
                except Exception as e:  # noqa: BLE001 - bad or missing array files
                    code, reason = _UNREADABLE, _first_line(e)
                agreed = _agree(code)
            if agreed == _OK:
                return step, *restored
            tried.append(f"{step} ({reason or 'unreadable on another process'})")
            self._move_aside(step, reason or None)
        if tried:
            raise CheckpointError(
                f"{self.directory}: no checkpoint could be restored; tried "
                + ", ".join(tried)
                + " (each moved aside as STEP.unreadable-TIME)"
            )
        return None

    def wait(self) -> None:
        self._manager.wait_until_finished()

    def close(self) -> None:
        self._manager.wait_until_finished()
        self._manager.close()


def abstract_with_shardings(state, shardings):
    return jax.tree.map(
        lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), state, shardings
    )


def resume_or_init(config, cfg, tx, mesh, rules, workdir: str):
    """The run's checkpointer and its state: restored from the newest readable
    checkpoint in WORKDIR/checkpoints (straight into the sharded layout), else freshly
    initialised (from `config.model.path` when set). Returns
    (checkpointer, graphdef, state, state shardings, start step, data iterator state)."""
    from kardia_jax.train.state import abstract_train_state, init_train_state, state_shardings

    ckpt = Checkpointer(
        os.path.join(workdir, "checkpoints"),
        max_to_keep=config.checkpoint.max_to_keep,
        async_save=config.checkpoint.async_save,
    )
    graphdef, abstract = abstract_train_state(cfg, tx, mesh, rules)
    shardings = state_shardings(abstract, tx, mesh, rules)
    restored = ckpt.restore_latest(abstract_with_shardings(abstract, shardings))
    if restored is None:
        graphdef, state, _ = init_train_state(
            cfg, tx, mesh, rules, seed=config.seed, hf_path=config.model.path or None
        )
        return ckpt, graphdef, state, shardings, 0, None
    start, state, data_state = restored
    print(f"resumed from step {start}", flush=True)
    return ckpt, graphdef, state, shardings, start, data_state
