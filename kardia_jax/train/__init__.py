"""Sharded training core shared by SFT and GRPO: mesh + rules, train state,
the pure jitted step, orbax checkpoints, metrics."""
