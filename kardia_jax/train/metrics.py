"""Training telemetry: FLOPs and MFU estimates, TensorBoard scalars, and a console
progress line with ETA. Values reach the host only every `log_every` steps."""

from __future__ import annotations

import sys
import time

from kardia_jax.models.config import ModelConfig


def flops_per_token(cfg: ModelConfig, seq_len: int) -> float:
    """Training FLOPs per token (forward + backward), PaLM's estimate:
    6 * N (matmul parameters; the input embedding is a lookup, not a matmul, but a
    tied embedding still serves as the output projection) + 12 * L * heads * head_dim * T."""
    n = cfg.num_params()
    if not cfg.tie_word_embeddings:
        n -= cfg.vocab_size * cfg.hidden_size
    attention = 12 * cfg.num_layers * cfg.num_heads * cfg.head_dim * seq_len
    return 6.0 * n + attention


class MetricsLogger:
    """Writes scalars to TensorBoard (process 0) and prints a progress line."""

    def __init__(self, logdir: str | None, total_steps: int, *, enabled: bool = True):
        self.total_steps = total_steps
        self.enabled = enabled
        self._writer = None
        if logdir and enabled:
            from tensorboardX import SummaryWriter

            self._writer = SummaryWriter(logdir)
        self._t0 = time.perf_counter()
        self._first_step: int | None = None

    def scalars(self, step: int, values: dict[str, float], prefix: str = "train") -> None:
        if self._writer is not None:
            for k, v in values.items():
                self._writer.add_scalar(f"{prefix}/{k}", float(v), step)
            self._writer.flush()

    def text(self, step: int, tag: str, text: str) -> None:
        if self._writer is not None:
            self._writer.add_text(tag, text, step)

    def progress(self, step: int, values: dict[str, float]) -> None:
        if not self.enabled:
            return
        if self._first_step is None:
            self._first_step, self._t0 = step, time.perf_counter()
        done = step - self._first_step
        elapsed = time.perf_counter() - self._t0
        eta = elapsed / done * (self.total_steps - step) if done > 0 else float("nan")
        width = 24
        filled = int(width * step / max(self.total_steps, 1))
        shown = "  ".join(f"{k} {v:.4g}" for k, v in values.items())
        print(
            f"[{'#' * filled}{'.' * (width - filled)}] {step}/{self.total_steps}  {shown}  "
            f"ETA {_fmt(eta)}",
            file=sys.stdout,
            flush=True,
        )

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()


def _fmt(seconds: float) -> str:
    if seconds != seconds:  # nan
        return "--:--"
    m, s = divmod(int(seconds), 60)
    h, m = divmod(m, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m:02d}:{s:02d}"
