"""transformers' outputs on the tiny checkpoints, recorded where torch is installed and
compared where it is not (the Python 3.12 / newest-jax venv of `.ci/run`: torch has no
CPU wheel for it).

    python -m tests.references DIR

writes, per variant of `tests/models/conftest.VARIANTS`, the checkpoint transformers
saves (DIR/VARIANT/config.json, model.safetensors) and DIR/VARIANT/reference.safetensors:
its float32 logits on a left-padded batch and its greedy `generate` of NEW tokens for
four prompts (tokens and their log-probs). `tests/models/test_recorded_parity.py` reads
them (KARDIA_JAX_REFERENCES=DIR) or, where torch is present, records them itself.
Plain arrays in safetensors and JSON: nothing is unpickled.
"""

from __future__ import annotations

import json
import os
import sys

import numpy as np

from tests.models.conftest import VARIANTS, build_hf_model, left_padded_batch

NEW = 32  # greedy tokens recorded per prompt
GENERATE_VARIANTS = ("qwen2_untied", "qwen3", "llama_tied")
REFERENCE = "reference.safetensors"
MANIFEST = "manifest.json"


def prompts() -> list[list[int]]:
    """4 prompts of lengths 5, 9, 13 and 16, ids in [3, 256): the sampler tests' set."""
    rng = np.random.default_rng(0)
    return [rng.integers(3, 256, n).tolist() for n in (5, 9, 13, 16)]


def left_pad(rows: list[list[int]]) -> tuple[np.ndarray, np.ndarray]:
    p = max(map(len, rows))
    ids = np.zeros((len(rows), p), np.int64)
    mask = np.zeros((len(rows), p), np.int64)
    for i, row in enumerate(rows):
        ids[i, p - len(row) :], mask[i, p - len(row) :] = row, 1
    return ids, mask


def hf_greedy(hf, ids, mask):
    """transformers' greedy `generate` of NEW tokens: ([B, NEW] tokens, [B, NEW, V] scores)."""
    import torch

    # One torch thread: on a shared 2-core machine, OpenMP's spinning workers can
    # stall a tiny model's generate for seconds; one thread is as fast here.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with torch.no_grad():
            out = hf.generate(
                input_ids=torch.from_numpy(ids),
                attention_mask=torch.from_numpy(mask),
                max_new_tokens=NEW,
                do_sample=False,
                pad_token_id=0,
                eos_token_id=None,  # never stop early: all NEW tokens are compared
                output_scores=True,
                return_dict_in_generate=True,
            )
    finally:
        torch.set_num_threads(threads)
    scores = torch.stack(out.scores, 1).float().numpy()
    return out.sequences[:, ids.shape[1] :].numpy(), scores


def record_variant(variant: str, folder: str) -> None:
    import torch
    from safetensors.numpy import save_file

    hf = build_hf_model(variant)
    hf.save_pretrained(folder)
    ids, mask = left_padded_batch()
    with torch.no_grad():
        logits = hf(
            input_ids=torch.from_numpy(ids).long(), attention_mask=torch.from_numpy(mask).long()
        ).logits.float()
    arrays = {"ids": ids, "mask": mask, "logits": logits.numpy()}
    if variant in GENERATE_VARIANTS:
        p_ids, p_mask = left_pad(prompts())
        tokens, scores = hf_greedy(hf, p_ids, p_mask)
        # A near-tie at some step could flip under float noise on either side.
        top2 = np.sort(scores, axis=-1)[..., -2:]
        gap = (top2[..., 1] - top2[..., 0]).min()
        if gap <= 1e-4:
            raise RuntimeError(f"{variant}: greedy top-2 gap {gap:.2e}, too close to compare")
        logp = np.asarray(torch.log_softmax(torch.from_numpy(scores), -1))
        chosen = np.take_along_axis(logp, tokens[..., None], -1)[..., 0]
        arrays |= {"prompt_ids": p_ids, "prompt_mask": p_mask}
        arrays |= {"greedy_tokens": tokens, "greedy_logprobs": chosen}
    arrays = {k: np.ascontiguousarray(v) for k, v in arrays.items()}
    save_file(arrays, os.path.join(folder, REFERENCE))


def record(directory: str, variants=None) -> None:
    """Records every variant (default: all of VARIANTS) under `directory`."""
    import torch
    import transformers

    transformers.utils.logging.disable_progress_bar()  # one bar per save_pretrained
    variants = sorted(variants or VARIANTS)
    for variant in variants:
        folder = os.path.join(directory, variant)
        os.makedirs(folder, exist_ok=True)
        record_variant(variant, folder)
    manifest = {
        "variants": variants,
        "new_tokens": NEW,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
    }
    with open(os.path.join(directory, MANIFEST), "w", encoding="utf-8") as f:
        json.dump(manifest, f, indent=2)


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python -m tests.references DIR")
    record(sys.argv[1])
    print(f"recorded transformers references for {len(VARIANTS)} variants in {sys.argv[1]}")
