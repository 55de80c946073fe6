"""`kardia-jax demo`: runs every pipeline stage that has landed, end to end, on the
embedded default (the bundled sample data and a tiny Qwen2.5-shaped model with the
real Qwen2.5 tokenizer), so a newcomer sees the whole path in minutes on a CPU."""

from __future__ import annotations

import argparse
import os
import time

from kardia_jax.config_files import REPO_CONFIGS


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--workdir", default="workdir/demo", help="where outputs go")
    parser.add_argument("--sft-steps", type=int, default=30, help="SFT steps (0 = 2 epochs)")


def _stage(name: str) -> float:
    print(f"\n== {name}", flush=True)
    return time.perf_counter()


def _done(t0: float) -> None:
    print(f"   ({time.perf_counter() - t0:.1f} s)", flush=True)


def main(args) -> int:
    from kardia_jax.config_files import load_config
    from kardia_jax.data.validate import load_dialogues
    from kardia_jax.models import count_params, load_hf_model
    from kardia_jax.train.sft import run_sft

    os.makedirs(args.workdir, exist_ok=True)

    t = _stage("data: validate the bundled KardiaBench-format sample")
    for split in ("train", "test"):
        _, report = load_dialogues(f"sample:{split}")
        print(f"{split}: {report.dialogues} dialogues, {sum(report.skipped.values())} skipped")
    _done(t)

    t = _stage("SFT: cold start on the easy split (configs/sft_tiny.py)")
    config = load_config(
        str(REPO_CONFIGS / "sft_tiny.py"), [f"--config.train.steps={args.sft_steps}"]
    )
    sft_dir = os.path.join(args.workdir, "sft")
    result = run_sft(config, sft_dir)
    print(
        f"step {result['step']}: train loss {result['loss']:.3f}, "
        f"held-out loss {result['eval_loss']:.3f}"
    )
    _done(t)

    t = _stage("export: the SFT policy as a Hugging Face checkpoint")
    model = load_hf_model(os.path.join(sft_dir, "hf"))
    print(
        f"{os.path.join(sft_dir, 'hf')}: {model.config.family}, "
        f"{count_params(model):,} parameters, vocabulary {model.config.vocab_size:,}"
    )
    _done(t)
    return 0
