"""orbax checkpoints of the train state plus the data iterator position.

Saves are asynchronous and atomic (orbax writes to a temporary directory and
renames it when complete), keep `max_to_keep`, and restore straight into the
sharded layout. Before restoring, the checkpoint's own metadata (its tree, shapes
and dtypes, read without the arrays) is compared with the run's state: a checkpoint
written under other settings is refused with a `CheckpointError` and left as it is
(or, with `checkpoint.on_mismatch=weights`, resumes from its model parameters alone),
while one that cannot be read is moved aside and the one before it is used.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
from etils import epath

from kardia_jax.errors import CheckpointError, ConfigError
from kardia_jax.train.digest import digest_mismatch, state_digest

# Codes the processes agree on before acting, worst first wins: a checkpoint one
# host cannot read is unusable for all, and a mismatch stops every host. _WEIGHTS:
# a mismatch whose model parameters map onto the run's (checkpoint.on_mismatch).
_OK, _WEIGHTS, _UNREADABLE, _MISMATCH = 0, 1, 2, 3
ON_MISMATCH = ("refuse", "weights")
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
        "setting back to resume, set checkpoint.on_mismatch=weights to resume from its "
        "model parameters with a fresh optimizer state, or use a new workdir; nothing "
        "was changed here"
    )


def _cannot_help(path: str, why: str) -> str:
    return (
        f"checkpoint {path} does not match this run's state, and "
        f"checkpoint.on_mismatch=weights cannot help: its model parameters do not map "
        f"onto this run's ({why}): another model or model.vocab_multiple? Put the old "
        "setting back to resume, or use a new workdir; nothing was changed here"
    )


def _weights_message(path: str, step: int, plan: WeightsPlan) -> str:
    return (
        f"checkpoint {path} was written under other settings; checkpoint.on_mismatch="
        f"weights: resuming at step {step} from its model parameters only "
        f"({plan.converted}); the optimizer state and the non-finite counters start "
        f"fresh (the learning-rate schedule continues from step {step})"
    )


class WeightsPlan(NamedTuple):
    """How a checkpoint of other settings resumes the run from its parameters:
    `read` is the part of the saved `state` item to read (a nested dict of
    ShapeDtypeStructs with the target shardings and dtypes), `finish(read arrays,
    step)` makes the run's state of it, `converted` says what changed, for the
    warning."""

    read: Any
    finish: Callable[[Any, int], Any]
    converted: str
    cast: frozenset = frozenset()  # leaves ("params/...") read in another dtype


# Given a mismatched checkpoint's tree metadata: a plan, or why its parameters do
# not map onto the run's.
WeightsPlanner = Callable[[Any], "WeightsPlan | str"]


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
            ("digest", ocp.args.JsonSave),
            ("digest", ocp.args.JsonRestore),
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
                # Array bytes damaged on disk can still decode (orbax reads them back
                # without complaint): the restore compares them with this.
                digest=ocp.args.JsonSave(state_digest(state)),
            ),
            force=True,
        )
        if wait:
            self._manager.wait_until_finished()

    def _check(self, step: int, abstract_state) -> tuple[int, str, Any]:
        """(code, reason, saved tree metadata) from the step's metadata alone; no
        array is read."""
        try:
            saved = self._manager.metadata(step).item_metadata["state"]
        except Exception as e:  # noqa: BLE001 - missing or garbled metadata: unreadable
            return _UNREADABLE, _first_line(e), None
        if saved is None:
            return _UNREADABLE, "no readable state item", None
        diffs = tree_mismatch(saved, abstract_state)
        if diffs:
            return _MISMATCH, _mismatch_message(f"{self.directory}/{step}", diffs), saved
        return _OK, "", saved

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
        return state, dict(data or {}), self._read_digest(step_dir)

    @staticmethod
    def _read_digest(step_dir) -> dict | None:
        if not (step_dir / "digest").exists():  # checkpoints written before it have none
            return None
        return ocp.JsonCheckpointHandler().restore(step_dir / "digest", args=ocp.args.JsonRestore())

    def _verify(self, state, digest: dict | None, skip: frozenset = frozenset()) -> str:
        """'' when the restored arrays have the sums saved with them, else why not;
        `state` may be part of what was saved, and leaves in `skip` (read in another
        dtype) are not compared. A computation over every process's devices: run it
        only once all have read."""
        if digest is None:
            return ""
        actual = {k: v for k, v in state_digest(state).items() if k not in skip}
        wrong = digest_mismatch({k: digest.get(k) for k in actual}, actual)
        if not wrong:
            return ""
        return (
            f"the arrays read back differ from the checksum saved with them "
            f"({len(wrong)} of {len(digest)}: {', '.join(wrong[:3])}"
            + (", ..." if len(wrong) > 3 else "")
            + "): damaged on disk"
        )

    def _restore_weights(self, step: int, plan: WeightsPlan):
        """Reads only `plan.read` of the step's state (orbax's partial restore: the
        optimizer state is never read), straight into the target shardings and
        dtypes. `plan.finish` runs only once every process has read its part: it is
        a computation over every process's devices."""
        step_dir = epath.Path(self.directory) / str(step)
        handler = ocp.PyTreeCheckpointHandler()
        try:
            part = handler.restore(
                step_dir / "state",
                args=ocp.args.PyTreeRestore(
                    item=plan.read,
                    restore_args=ocp.checkpoint_utils.construct_restore_args(plan.read),
                    partial_restore=True,
                ),
            )
        finally:
            handler.close()
        data = ocp.JsonCheckpointHandler().restore(step_dir / "data", args=ocp.args.JsonRestore())
        return part, dict(data or {}), self._read_digest(step_dir)

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
            print(f"warning: {msg}", flush=True)
        multihost_utils.sync_global_devices(f"checkpoint {step} moved aside")
        self._manager.reload()

    def restore_latest(self, abstract_state, *, weights: WeightsPlanner | None = None):
        """(step, state, data_state) from the newest checkpoint that restores, or None.

        `abstract_state` holds `jax.ShapeDtypeStruct`s with shardings, so every
        array comes back already placed on the mesh. Raises `CheckpointError`, with
        nothing moved, when the newest readable checkpoint was written for another
        state (other shapes, dtypes or tree); and when checkpoints exist but none
        restores, rather than start again from step 0. With `weights`
        (checkpoint.on_mismatch=weights), a checkpoint of another state whose model
        parameters map onto the run's resumes from them alone.
        """
        self._manager.wait_until_finished()
        tried = []
        for step in reversed(self.steps()):
            code, reason, saved = self._check(step, abstract_state)
            plan = None
            if code == _MISMATCH and weights is not None:
                plan = weights(saved)
                if isinstance(plan, str):
                    reason = _cannot_help(f"{self.directory}/{step}", plan)
                else:
                    code, reason = _WEIGHTS, ""
            agreed = _agree(code)
            if agreed == _MISMATCH:
                if code != _MISMATCH:
                    reason = (
                        f"checkpoint {self.directory}/{step} does not match this run's "
                        "state on another process (see its error)"
                    )
                raise CheckpointError(reason)
            if agreed == _WEIGHTS and plan is None:  # matched here, not on another host
                plan = weights(saved)
            restored = None
            if agreed in (_OK, _WEIGHTS):
                try:
                    if agreed == _WEIGHTS:
                        restored = self._restore_weights(step, plan)
                    else:
                        restored = self._restore(step, abstract_state)
                    code, reason = _OK, ""
                except Exception as e:  # noqa: BLE001 - bad or missing array files
                    code, reason = _UNREADABLE, _first_line(e)
                read = _agree(code) == _OK
                if read and agreed == _OK:
                    state, data, digest = restored
                    # The sums are global: every process reaches the same verdict.
                    reason = self._verify(state, digest)
                    if not reason:
                        return step, state, data
                elif read:
                    part, data, digest = restored
                    reason = self._verify(part, digest, plan.cast)
                if read and agreed == _WEIGHTS and not reason:
                    if jax.process_index() == 0:
                        msg = _weights_message(f"{self.directory}/{step}", step, plan)
                        print(f"warning: {msg}", flush=True)
                    return step, plan.finish(part, step), data
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


def _scanned(flat_params: dict) -> bool | None:
    """Whether a flat params tree stacks its layers ("layers/<name>", [L, ...]) rather
    than naming each ("layers/<i>/<name>"); None when it has no layers."""
    for key in flat_params:
        if key[0] == "layers" and len(key) > 1:
            return not str(key[1]).isdigit()
    return None


def relayout_layers(flat: dict, keys, num_layers: int) -> dict:
    """The flat params `flat` under the layer layout of `keys` (the run's): a per-layer
    entry ("layers", "i", ...) is row i of the stacked ("layers", ...), a stacked one
    is the per-layer entries stacked; the models' layout (`Transformer`, and
    sampling's `unstack_layers` for a live model). Traced inside the jit that places
    the result, so no layer is gathered on a host."""
    out = {}
    for key in keys:
        if key in flat:
            out[key] = flat[key]
        elif str(key[1]).isdigit():
            out[key] = flat[("layers", *key[2:])][int(key[1])]
        else:
            out[key] = jnp.stack([flat[("layers", str(i), *key[1:])] for i in range(num_layers)])
    return out


def _schedules_at(opt_state, step: int):
    """A fresh optimizer state whose learning-rate schedules stand at `step`, as the
    logged learning rate does; Adam's own count stays 0 to bias-correct its fresh
    moments."""

    def at(s):
        if isinstance(s, optax.ScaleByScheduleState):
            return s._replace(count=jnp.full_like(s.count, step))
        return s

    return jax.tree.map(at, opt_state, is_leaf=lambda s: isinstance(s, optax.ScaleByScheduleState))


def weights_planner(cfg, tx, mesh, rules, abstract, shardings) -> WeightsPlanner:
    """checkpoint.on_mismatch=weights: a checkpoint's model parameters read into the
    run's state (`abstract`, `shardings`) where only their layout differs: layers
    stacked or not (model.scan_layers) and dtype (cast on read). Its step and data
    state are kept; the optimizer state and non-finite counters start fresh."""
    from kardia_jax.sharding import param_shardings
    from kardia_jax.train.state import TrainState, abstract_train_state

    run_keys = list(ocp.tree.to_flat_dict(abstract.params))

    def plan(saved) -> WeightsPlan | str:
        try:
            saved_params = saved["params"]
        except (KeyError, TypeError):
            return "the checkpoint has no params"
        scanned = _scanned(ocp.tree.to_flat_dict(saved_params))
        saved_cfg = cfg if scanned is None else cfg.replace(scan_layers=scanned)
        # The run's parameters in the checkpoint's layer layout, placed by the same
        # rules: what to read, in the run's dtype (orbax casts on read).
        _, alt = abstract_train_state(saved_cfg, tx, mesh, rules)
        read = abstract_with_shardings(alt.params, param_shardings(alt.params, mesh, rules))
        diffs = tree_mismatch(saved_params, read)
        casts = [d for d in diffs if ": dtype " in d]
        problems = [d for d in diffs if d not in casts]
        if problems:
            more = len(problems) - _SHOWN
            return "; ".join(problems[:_SHOWN]) + (f"; and {more} more" if more > 0 else "")
        converted = []
        if saved_cfg.scan_layers != cfg.scan_layers:
            how = "stacked" if cfg.scan_layers else "unstacked"
            converted.append(f"layers {how} for model.scan_layers={cfg.scan_layers}")
        if casts:
            pairs = sorted({d.split(": dtype ", 1)[1] for d in casts})
            converted.append(
                "cast "
                + ", ".join(p.replace(" saved, ", " -> ").removesuffix(" expected") for p in pairs)
            )

        def finish(part, step: int):
            def build(flat):
                params = ocp.tree.from_flat_dict(
                    relayout_layers(flat, run_keys, cfg.num_layers), target=abstract.params
                )
                zero = jnp.zeros((), jnp.int32)
                return TrainState(
                    step=jnp.full((), step, jnp.int32),
                    params=params,
                    opt_state=_schedules_at(tx.init(params), step),
                    nonfinite_streak=zero,
                    nonfinite_total=zero,
                )

            flat = ocp.tree.to_flat_dict(part["params"])
            return jax.jit(build, out_shardings=shardings)(flat)

        nested = ocp.tree.from_flat_dict(ocp.tree.to_flat_dict(read))
        cast = frozenset("params/" + d.split(": dtype ", 1)[0] for d in casts)
        return WeightsPlan({"params": nested}, finish, "; ".join(converted) or "as saved", cast)

    return plan


def resume_or_init(config, cfg, tx, mesh, rules, workdir: str):
    """The run's checkpointer and its state: restored from the newest readable
    checkpoint in WORKDIR/checkpoints (straight into the sharded layout), else freshly
    initialised (from `config.model.path` when set). A checkpoint of other settings
    is refused, or with `checkpoint.on_mismatch=weights` resumes from its model
    parameters (`weights_planner`). Returns (checkpointer, graphdef, state, state
    shardings, start step, data iterator state)."""
    from kardia_jax.train.state import abstract_train_state, init_train_state, state_shardings

    on_mismatch = config.checkpoint.get("on_mismatch", "refuse")
    if on_mismatch not in ON_MISMATCH:
        raise ConfigError(
            f"checkpoint.on_mismatch={on_mismatch!r}: use one of {', '.join(ON_MISMATCH)}"
        )
    ckpt = Checkpointer(
        os.path.join(workdir, "checkpoints"),
        max_to_keep=config.checkpoint.max_to_keep,
        async_save=config.checkpoint.async_save,
    )
    graphdef, abstract = abstract_train_state(cfg, tx, mesh, rules)
    shardings = state_shardings(abstract, tx, mesh, rules)
    weights = None
    if on_mismatch == "weights":
        weights = weights_planner(cfg, tx, mesh, rules, abstract, shardings)
    restored = ckpt.restore_latest(abstract_with_shardings(abstract, shardings), weights=weights)
    if restored is None:
        graphdef, state, _ = init_train_state(
            cfg, tx, mesh, rules, seed=config.seed, hf_path=config.model.path or None
        )
        return ckpt, graphdef, state, shardings, 0, None
    start, state, data_state = restored
    print(f"resumed from step {start}", flush=True)
    return ckpt, graphdef, state, shardings, start, data_state
