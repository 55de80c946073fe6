"""Evaluation on CPU in about a minute: a tiny policy (e.g. an SFT run of
configs/sft_tiny.py, --model SFT_WORKDIR/hf) on the bundled sample's test split,
greedy, short answers, one device. Rubric dimensions are scored only when a judge
is given (--judge DIR); otherwise the table says "not scored". For tests and the demo."""

from kardia_jax.eval.config import eval_config


def get_config():
    c = eval_config()
    c.model.param_dtype = "float32"  # bf16 matmuls are slower than f32 on CPU
    c.model.compute_dtype = "float32"
    c.data.max_length = 1024  # prompt tokens: older turns are dropped to fit
    c.eval.max_new_tokens = 64
    c.eval.batch_size = 16
    c.eval.bootstrap = 1000
    c.judge.dtype = "float32"
    c.judge.batch_size = 16
    c.judge.max_batch = 16
    c.judge.length_buckets = (512, 1024, 2048)
    return c
