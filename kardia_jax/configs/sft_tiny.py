"""SFT on CPU in seconds per step: a tiny random-init Qwen2-shaped model (the real
Qwen2.5 tokenizer and vocabulary) on the bundled sample. For tests and the demo."""

from kardia_jax.train.config import sft_config


def get_config():
    c = sft_config()
    c.model.init = dict(
        family="qwen2",
        hidden_size=64,
        intermediate_size=256,
        num_layers=2,
        num_heads=4,
        num_kv_heads=2,
        head_dim=16,
        qkv_bias=True,
        tie_word_embeddings=True,
        rope_theta=1e6,
        rms_norm_eps=1e-6,
        bos_token_id=151643,
        eos_token_id=151645,
    )
    c.model.compute_dtype = "float32"  # bf16 matmuls are slower than f32 on CPU
    # Per turn: at max_length 512 the sample's whole dialogues (~950-1550 tokens) would
    # be cut to their first exchange or two; holding them whole needs 3x longer rows.
    c.data.example = "turn"
    c.data.max_length = 512
    c.data.buckets = (256, 512)
    c.data.heldout_fraction = 0.2  # the sample has 12 training profiles: hold out ~2
    c.train.global_batch = 8
    c.train.lr = 1e-2  # a tiny random model wants a far larger lr than the paper's 1e-4
    c.train.warmup_steps = 2
    c.checkpoint.every = 20
    c.log.every = 5
    c.log.peak_tflops = 0.2  # this CPU: about 0.2 TFLOP/s in f32
    c.eval.every = 0
    return c
