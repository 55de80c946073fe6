"""orbax checkpoints of the train state plus the data iterator position.

Saves are asynchronous and atomic (orbax writes to a temporary directory and
renames it when complete), keep `max_to_keep`, and restore straight into the
sharded layout. A latest checkpoint that fails to restore is reported and the one
before it is used.
"""

from __future__ import annotations

import logging
import os
import time

import jax
import orbax.checkpoint as ocp

from kardia_jax.errors import CheckpointError

log = logging.getLogger(__name__)


class Checkpointer:
    def __init__(self, directory: str, *, max_to_keep: int = 3, async_save: bool = True):
        self.directory = os.path.abspath(directory)
        self._manager = ocp.CheckpointManager(
            self.directory,
            options=ocp.CheckpointManagerOptions(
                max_to_keep=max_to_keep,
                enable_async_checkpointing=async_save,
                create=True,
            ),
            item_names=("state", "data"),
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

    def restore_latest(self, abstract_state):
        """(step, state, data_state) from the newest checkpoint that restores, or None.

        `abstract_state` holds `jax.ShapeDtypeStruct`s with shardings, so every
        array comes back already placed on the mesh.
        """
        self._manager.wait_until_finished()
        for step in reversed(self.steps()):
            try:
                restored = self._manager.restore(
                    step,
                    args=ocp.args.Composite(
                        state=ocp.args.StandardRestore(abstract_state),
                        data=ocp.args.JsonRestore(),
                    ),
                )
            except Exception as e:  # noqa: BLE001 - any failure means "unusable checkpoint"
                reason = f"{type(e).__name__}: {e}".splitlines()[0][:300]
                # Kept for inspection, but moved out of the way: the resumed run will
                # save this step number again.
                aside = os.path.join(self.directory, f"{step}.unreadable-{int(time.time())}")
                os.rename(os.path.join(self.directory, str(step)), aside)
                self._manager.reload()
                msg = (
                    f"checkpoint {self.directory}/{step} is unreadable ({reason}); moved to "
                    f"{aside}; trying the previous one"
                )
                log.warning(msg)
                print(f"warning: {msg}", flush=True)
                continue
            return step, restored["state"], dict(restored["data"] or {})
        if self.steps():
            raise CheckpointError(f"{self.directory}: no checkpoint could be restored")
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
