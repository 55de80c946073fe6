"""The `kardia-jax` command: parses flags and hands off to library code.

Each subcommand lives in its own module exposing `add_arguments(parser)` and
`main(args) -> int`; modules are imported lazily so `kardia-jax data ...` does
not pay for importing the model stack.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

from kardia_jax.errors import KardiaError, Preempted
from kardia_jax.host import keep_freed_memory, quiet_cpu_host

# name -> (module, one-line help)
SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "demo": ("kardia_jax.demo", "run the demo job on the embedded default"),
    "model": ("kardia_jax.models.cli", "inspect, convert and resize Hugging Face checkpoints"),
    "data": ("kardia_jax.data.cli", "validate and inspect KardiaBench data"),
    "generate": ("kardia_jax.sampling.cli", "generate replies with a checkpoint's chat template"),
    "chat": ("kardia_jax.sampling.chat", "interactive chat showing the four spans"),
    "sft": ("kardia_jax.train.cli", "cold-start SFT on the easy split"),
    "grpo": ("kardia_jax.rl.cli", "GRPO with rubric rewards on the hard split"),
    "rl": ("kardia_jax.rl.difficulty_cli", "split data into easy / hard by the policy's pass rate"),
    "eval": ("kardia_jax.eval.cli", "evaluate on the test split: emotion accuracy, rubric, report"),
    "report": ("kardia_jax.eval.report_cli", "rebuild report.html from an eval workdir and logs"),
    "pipeline": ("kardia_jax.pipeline.cli", "data -> SFT -> GRPO -> eval -> report, resumable"),
    "compile-check": ("kardia_jax.pipeline.compile_check", "memory and FLOPs of compiled steps"),
}


def build_parser(argv: list[str]) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="kardia-jax", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    # Only the chosen subcommand's module is imported (the others just get a stub
    # parser), so a broken optional stage never breaks unrelated commands.
    chosen = next((a for a in argv if not a.startswith("-")), None)
    for name, (module, help_text) in SUBCOMMANDS.items():
        p = sub.add_parser(name, help=help_text)
        if name == chosen:
            mod = importlib.import_module(module)
            mod.add_arguments(p)
            p.set_defaults(_main=mod.main)
    return parser


def quiet_libraries() -> None:
    """Before the libraries are imported: transformers advises on every start that
    PyTorch is absent (we use its tokenizers and configs, never its models)."""
    os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")


def main(argv: list[str] | None = None) -> int:
    keep_freed_memory()  # before the subcommand's import starts XLA's threads
    quiet_cpu_host()  # before jax is imported: it reads JAX_PLATFORMS once
    quiet_libraries()
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser(argv)
    # `--config.a.b=value` overrides of an ml_collections run config pass through.
    args, unknown = parser.parse_known_args(argv)
    args.config_overrides = [u for u in unknown if u.startswith("--config.")]
    rest = [u for u in unknown if not u.startswith("--config.")]
    if rest:
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    if hasattr(args, "coordinator"):  # a command that can run on several processes
        from kardia_jax.train.distributed import maybe_initialize

        # First: jax.distributed refuses to start once anything has started a backend.
        maybe_initialize(args.coordinator, args.num_processes, args.process_id)
    try:
        return int(args._main(args) or 0)
    except Preempted as e:
        # Every process agreed on the step and saved it: a normal end, all together.
        print(str(e), flush=True)
        return 0
    except KardiaError as e:
        # One line, whatever a library's message underneath looked like.
        print(f"kardia-jax {args.command}: error: {' '.join(str(e).split())}", file=sys.stderr)
        return _end(2, agreed=getattr(e, "agreed", False))
    except Exception as e:
        if not _several_processes():
            raise
        import traceback

        import jax

        if isinstance(e, jax.errors.JaxRuntimeError):  # most often: a peer has stopped
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            print(
                f"kardia-jax {args.command}: error: {first} (when another process has "
                "stopped, its log has the cause)",
                file=sys.stderr,
            )
        else:
            traceback.print_exc()
        return _end(1, agreed=getattr(e, "agreed", False))


def _several_processes() -> bool:
    if "jax" not in sys.modules:
        return False
    import jax

    return jax.distributed.is_initialized() and jax.process_count() > 1


def _end(code: int, *, agreed: bool) -> int:
    """On several processes, an error that this process alone may have hit ends it at
    once, so that the others' collectives fail now instead of after jax's timeouts
    (kardia_jax/train/distributed.py says how long)."""
    if not agreed and _several_processes():
        from kardia_jax.train.distributed import leave

        leave(code)
    return code


if __name__ == "__main__":
    sys.exit(main())
