"""Writes the GRPO-math goldens (trl.json, verl.json) by running TRL's and verl's own code.

Run it with a throwaway venv that holds the reference libraries, never the project venv
(verl and TRL pin transformers versions we do not use):

    python3 -m venv /tmp/golden-venv
    /tmp/golden-venv/bin/pip install torch==2.13.0      # first: the CPU wheel on local disk
    /tmp/golden-venv/bin/pip install trl omegaconf tensordict ray codetiming orjson
    /tmp/golden-venv/bin/pip install --no-deps verl
    /tmp/golden-venv/bin/python tests/rl/goldens/make_goldens.py

(ray, codetiming and orjson are only import-time dependencies of `verl/__init__.py` and
`verl.utils`; core_algos' math uses torch alone.) The tests read the JSON and need neither
library. Inputs are seeded numpy draws stored in the files, so the tests use exactly the
tensors the references saw.

How each reference is run:
- TRL: GRPOTrainer is built with `object.__new__` (no model, no dataset) and given just the
  attributes its methods read. Advantages come from its real `_generate_and_score_completions`
  with generation and reward functions patched to return fixed ids and rewards. Losses come
  from its real `_compute_loss` with `_get_per_token_logps_and_entropies` patched to return
  our fixed log-probs (a leaf tensor, so autograd gives the gradient too).
- verl: plain calls into `verl.trainer.ppo.core_algos` (compute_grpo_outcome_advantage and
  its vectorised twin, compute_policy_loss_vanilla, kl_penalty, agg_loss), with an OmegaConf
  DictConfig as the actor config (a type its PolicyLossFn signature accepts).
"""

import json
import os
import sys
import types
from collections import defaultdict
from importlib.metadata import version

import numpy as np
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
SEED = 20260501
NUM_PROMPTS, GROUP = 4, 4
B, T = NUM_PROMPTS * GROUP, 10
# TRL's dr_grpo divides by max_completion_length, which may exceed the padded T.
MAX_COMPLETION_LENGTH = 16


def _r(x):
    """JSON-ready nested lists; 9 significant digits round-trip a float32 exactly."""
    a = np.asarray(x.detach().cpu().numpy() if torch.is_tensor(x) else x)
    if a.dtype == bool:
        return a.tolist()
    return np.vectorize(lambda v: float(f"{v:.9g}"), otypes=[object])(a.astype(np.float64)).tolist()


def make_inputs():
    rng = np.random.default_rng(SEED)
    rewards = rng.uniform(0.0, 1.0, size=B).astype(np.float32)
    rewards[GROUP : 2 * GROUP] = 2.0 / 3.0  # a zero-variance group
    rewards[3 * GROUP] = rewards[3 * GROUP + 1]  # a tie inside a group
    lengths = rng.integers(1, T + 1, size=B)
    lengths[0], lengths[3] = T, 0  # a full row and an all-masked row
    mask = (np.arange(T)[None, :] < lengths[:, None]).astype(np.float32)
    mask[5, 1:3] = 0.0  # a hole inside a completion (a tool-output span, say)
    mask[5, 0] = 1.0
    logp = (-np.abs(rng.normal(size=(B, T))) * 1.5 - 0.05).astype(np.float32)
    old_logp = (logp - rng.normal(scale=0.5, size=(B, T))).astype(np.float32)
    # A few large ratios so that dual clip (ratio > 3) engages on negative advantages.
    old_logp[[1, 6, 9, 13], [0, 1, 0, 2]] = logp[[1, 6, 9, 13], [0, 1, 0, 2]] - 1.6
    ref_logp = (logp + rng.normal(scale=0.7, size=(B, T))).astype(np.float32)
    # Where ref - logp > ~2.6, k3 exceeds verl's clamp of 10.
    ref_logp[[0, 2, 7], [1, 0, 0]] = logp[[0, 2, 7], [1, 0, 0]] + 3.5
    ref_logp[4, 0] = logp[4, 0] - 3.0
    # Finite garbage in masked positions: masked tokens must not matter.
    off = mask == 0
    logp[off], old_logp[off], ref_logp[off] = -50.0, 3.0, -7.0
    token_adv = rng.normal(size=(B, T)).astype(np.float32)
    return dict(
        num_prompts=NUM_PROMPTS,
        group_size=GROUP,
        rewards=rewards,
        mask=mask,
        logp=logp,
        old_logp=old_logp,
        ref_logp=ref_logp,
        token_advantages=token_adv,
        max_completion_length=MAX_COMPLETION_LENGTH,
    )


def write(name, payload):
    path = os.path.join(HERE, name)
    with open(path, "w") as f:
        json.dump(payload, f, separators=(",", ":"))
        f.write("\n")
    print(f"wrote {path} ({os.path.getsize(path)} bytes)")


# ---------------------------------------------------------------------------------------------
# TRL
# ---------------------------------------------------------------------------------------------


class _OneProcessAccelerator:
    """The slice of accelerate.Accelerator that GRPOTrainer touches, for a single process."""

    device = torch.device("cpu")
    num_processes = 1
    process_index = 0
    sync_gradients = True

    def gather(self, t):
        return t

    def gather_for_metrics(self, t):
        return t

    def reduce(self, t, reduction="sum"):
        return t


def _trl_trainer(**attrs):
    from trl.trainer.grpo_trainer import GRPOTrainer

    trainer = object.__new__(GRPOTrainer)
    trainer.accelerator = _OneProcessAccelerator()
    trainer.model = types.SimpleNamespace(training=True, is_gradient_checkpointing=False)
    trainer._metrics = {"train": defaultdict(list), "eval": defaultdict(list)}
    for k, v in attrs.items():
        setattr(trainer, k, v)
    return trainer


def trl_advantages(inp, scale_rewards):
    """Runs GRPOTrainer._generate_and_score_completions with fixed completions and rewards."""
    rewards = torch.tensor(inp["rewards"])
    completion_ids = [[7] * max(int(n), 1) for n in inp["mask"].sum(1)]
    args = types.SimpleNamespace(
        per_device_train_batch_size=B,
        per_device_eval_batch_size=B,
        steps_per_generation=1,
        gradient_accumulation_steps=1,
        gradient_checkpointing_kwargs=None,
    )
    trainer = _trl_trainer(
        args=args,
        environment_factories=None,
        environments=None,
        tools=[],
        _tokenizer=types.SimpleNamespace(pad_token_id=0),
        pad_to_multiple_of=None,
        mask_truncated_completions=False,
        num_iterations=1,
        use_vllm=False,
        vllm_importance_sampling_correction=False,
        beta=0.0,
        ref_model=None,
        num_generations=GROUP,
        num_generations_eval=GROUP,
        multi_objective_aggregation="sum_then_normalize",
        reward_funcs=[None],
        reward_weights=torch.ones(1),
        reward_func_names=["reward"],
        scale_rewards=scale_rewards,
        _logs={
            "prompt": [],
            "completion": [],
            "rewards": defaultdict(list),
            "advantages": [],
            "extra": defaultdict(list),
            "images": [],
        },
        _pending_extra_logs={},
        _pending_metrics={},
        log_multimodal=False,
    )
    trainer._generate = lambda prompts: (
        [[1]] * len(prompts),
        completion_ids,
        None,
        ["c"] * len(prompts),
        None,
        {},
        None,
        None,
    )
    trainer._calculate_rewards = lambda *a, **k: rewards[:, None].clone()
    out = trainer._generate_and_score_completions([{"prompt": "p"}] * B)
    return out["advantages"]


TRL_LOSS_TYPES = {
    # TRL loss_type -> (our agg, how our extra normalisers must be set to match)
    "grpo": ("seq-mean-token-mean", {"num_seqs": B}),
    "bnpo": ("token-mean", {}),
    "dapo": ("token-mean", {}),
    "dr_grpo": (
        "seq-mean-token-sum-norm",
        {"num_seqs": B, "norm": MAX_COMPLETION_LENGTH},
    ),
    "luspo": ("seq-mean-token-sum", {"num_seqs": B}),
}


def trl_loss(inp, loss_type, eps_low, eps_high, beta, advantages):
    logp = torch.tensor(inp["logp"], requires_grad=True)
    mask = torch.tensor(inp["mask"])
    args = types.SimpleNamespace(delta=None, use_bias_correction_kl=False, steps_per_generation=1)
    trainer = _trl_trainer(
        args=args,
        top_entropy_quantile=1.0,
        off_policy_mask_threshold=None,
        importance_sampling_level="token",
        beta=beta,
        loss_type=loss_type,
        epsilon_low=eps_low,
        epsilon_high=eps_high,
        use_vllm=False,
        vllm_importance_sampling_correction=False,
        current_gradient_accumulation_steps=1,
        max_completion_length=MAX_COMPLETION_LENGTH,
        _entropy_bonus_enabled=False,
        aux_loss_enabled=False,
    )
    trainer._get_per_token_logps_and_entropies = lambda *a, **k: (
        logp,
        torch.zeros_like(logp),
        None,
    )
    inputs = {
        "prompt_ids": torch.ones(B, 1, dtype=torch.long),
        "prompt_mask": torch.ones(B, 1, dtype=torch.long),
        "completion_ids": torch.ones(B, T, dtype=torch.long),
        "completion_mask": mask,
        "advantages": torch.tensor(advantages),
        "old_per_token_logps": torch.tensor(inp["old_logp"]),
        "ref_per_token_logps": torch.tensor(inp["ref_logp"]),
        "num_items_in_batch": mask.sum(),
    }
    loss = trainer._compute_loss(trainer.model, inputs)
    loss.backward()
    m = trainer._metrics["train"]
    metrics = {
        "clip_frac_low": m["clip_ratio/low_mean"][0],
        "clip_frac_high": m["clip_ratio/high_mean"][0],
        "clip_frac": m["clip_ratio/region_mean"][0],
    }
    if beta:
        metrics["kl_token_mean"] = m["kl"][0]
    return loss, logp.grad, metrics


def make_trl(inp):
    adv = {s: trl_advantages(inp, s) for s in ("group", "batch", "none")}
    cases = []
    for loss_type, (agg, norms) in TRL_LOSS_TYPES.items():
        settings = [
            # (clip_low, clip_high, beta, per-token advantages?)
            (0.2, 0.2, 0.0, False),
            (0.2, 0.28, 0.04, False),
            (0.2, 0.28, 0.0, True),
            (0.2, 0.2, 1.0, "zero"),  # zero advantages: the loss is the aggregated k3 alone
        ]
        for eps_low, eps_high, beta, per_token in settings:
            if per_token == "zero":
                a = np.zeros(B, np.float32)
            elif per_token:
                a = inp["token_advantages"]
            else:
                a = adv["group"].numpy()
            loss, grad, metrics = trl_loss(inp, loss_type, eps_low, eps_high, beta, a)
            cases.append(
                dict(
                    loss_type=loss_type,
                    agg=agg,
                    agg_kwargs=norms,
                    clip_low=eps_low,
                    clip_high=eps_high,
                    beta=beta,
                    advantages=_r(a),
                    loss=_r(loss),
                    grad_logp=_r(grad),
                    metrics={k: _r(v) for k, v in metrics.items()},
                )
            )
    return dict(
        library="trl",
        versions={"trl": version("trl"), "torch": torch.__version__},
        notes={
            "eps": "TRL adds 1e-4 to the std (hard-coded); std is nanstd with Bessel's correction.",
            "loss_types": {k: {"agg": v[0], "agg_kwargs": v[1]} for k, v in TRL_LOSS_TYPES.items()},
            "grpo/dr_grpo/luspo": "TRL's sequence means divide by all B rows, empty ones too.",
            "dapo": "with num_items_in_batch = mask.sum(), one process, no accumulation.",
            "luspo": "token-level ratios; TRL's __init__ check (sequence level) is bypassed "
            "to reach its seq-mean-token-sum aggregation.",
            "kl": "per_token_kl = exp(ref - logp) - (ref - logp) - 1 (k3), no clamp, "
            "added as beta * kl to the per-token loss before aggregation.",
            "log_ratio": "TRL does not clamp the log-ratio before exp.",
        },
        inputs={k: _r(v) if isinstance(v, np.ndarray) else v for k, v in inp.items()},
        advantages={s: dict(eps=1e-4, ddof=1, values=_r(v)) for s, v in adv.items()},
        policy_loss=cases,
    )


# ---------------------------------------------------------------------------------------------
# verl
# ---------------------------------------------------------------------------------------------

VERL_AGGS = ("token-mean", "seq-mean-token-mean", "seq-mean-token-sum", "seq-mean-token-sum-norm")
VERL_KL = {"kl": "k1", "k1": "k1", "mse": "k2", "k2": "k2", "low_var_kl": "k3", "k3": "k3"}


def make_verl(inp):
    from omegaconf import OmegaConf
    from verl.trainer.ppo import core_algos

    mask = torch.tensor(inp["mask"])
    index = np.array([f"prompt-{i // GROUP}" for i in range(B)], dtype=object)
    token_rewards = torch.zeros(B, T)
    token_rewards[:, 0] = torch.tensor(inp["rewards"])  # verl sums over T
    advantages = {}
    for fn_name in ("compute_grpo_outcome_advantage", "compute_grpo_vectorized_outcome_advantage"):
        fn = getattr(core_algos, fn_name)
        for norm_by_std, scale in ((True, "group"), (False, "none")):
            # An all-ones response mask returns the per-completion scalar in every column.
            a, _ = fn(
                token_level_rewards=token_rewards.clone(),
                response_mask=torch.ones(B, T),
                index=index,
                epsilon=1e-6,
                norm_adv_by_std_in_grpo=norm_by_std,
            )
            advantages[f"{fn_name}/{scale}"] = dict(
                scale=scale, eps=1e-6, ddof=1, values=_r(a[:, 0])
            )

    group_adv = torch.tensor(advantages["compute_grpo_outcome_advantage/group"]["values"])
    cases = []
    settings = [
        # (clip_low, clip_high, clip_ratio_c or None for "off", per-token advantages?, batch info)
        (0.2, 0.2, None, False, {}),
        (0.2, 0.28, 3.0, False, {}),
        (0.2, 0.28, 1.5, True, {}),
        (
            0.2,
            0.2,
            3.0,
            False,
            {"batch_num_tokens": 200, "global_batch_size": 20, "loss_scale_factor": 16},
        ),
    ]
    for agg in VERL_AGGS:
        for clip_low, clip_high, dual, per_token, info in settings:
            a = torch.tensor(inp["token_advantages"]) if per_token else group_adv[:, None] * mask
            logp = torch.tensor(inp["logp"], requires_grad=True)
            config = OmegaConf.create(
                dict(
                    clip_ratio=0.2,
                    clip_ratio_low=clip_low,
                    clip_ratio_high=clip_high,
                    # verl always applies dual clip; a bound no ratio reaches turns it off.
                    clip_ratio_c=1e10 if dual is None else dual,
                    global_batch_info=dict(info),
                )
            )
            loss, metrics = core_algos.compute_policy_loss_vanilla(
                old_log_prob=torch.tensor(inp["old_logp"]),
                log_prob=logp,
                advantages=a,
                response_mask=mask,
                loss_agg_mode=agg,
                config=config,
            )
            loss.backward()
            ours = {}
            if "batch_num_tokens" in info:
                ours = {
                    "num_tokens": info["batch_num_tokens"],
                    "num_seqs": info["global_batch_size"],
                    "norm": info["loss_scale_factor"],
                }
            cases.append(
                dict(
                    agg=agg,
                    agg_kwargs=ours,
                    verl_global_batch_info=info,
                    clip_low=clip_low,
                    clip_high=clip_high,
                    dual_clip=dual,
                    advantages=_r(a if per_token else group_adv),
                    per_token_advantages=per_token,
                    loss=_r(loss),
                    grad_logp=_r(logp.grad),
                    metrics={
                        "clip_frac": metrics["actor/pg_clipfrac"],
                        "dual_clip_frac": metrics["actor/pg_clipfrac_lower"],
                        "ppo_kl": metrics["actor/ppo_kl"],
                    },
                )
            )

    kl = []
    for name, ours in VERL_KL.items():
        logp = torch.tensor(inp["logp"], requires_grad=True)
        per_token = core_algos.kl_penalty(logp, torch.tensor(inp["ref_logp"]), name)
        aggs = {agg: core_algos.agg_loss(per_token, mask, agg) for agg in VERL_AGGS}
        aggs["token-mean"].backward()
        kl.append(
            dict(
                verl_name=name,
                estimator=ours,
                per_token_masked=_r(per_token.detach() * mask),
                agg=_r(np.array([aggs[a].item() for a in VERL_AGGS])),
                grad_logp_token_mean=_r(logp.grad),
            )
        )

    return dict(
        library="verl",
        versions={"verl": version("verl"), "torch": torch.__version__},
        notes={
            "eps": "verl GRPO adds epsilon=1e-6 to torch.std (Bessel's correction).",
            "group_size_1": "verl uses mean 0 and std 1 for a group of one (raw reward).",
            "agg": "verl excludes all-masked rows from sequence means (global_batch_size "
            "defaults to the count of non-empty rows); seq-mean-token-sum-norm divides by "
            "loss_scale_factor, default mask.shape[-1].",
            "dual_clip": "clip_ratio_c=1e10 stands for 'no dual clip'.",
            "kl": "k3 (low_var_kl) clamps ref - logp to [-20, 20] and the result to [-10, 10].",
            "log_ratio": "verl clamps logp - old_logp to [-20, 20] before exp.",
            "advantages_in_loss": "[B] cases pass A[:, None] * mask as verl does.",
            "agg_list": list(VERL_AGGS),
        },
        inputs={k: _r(v) if isinstance(v, np.ndarray) else v for k, v in inp.items()},
        advantages=advantages,
        policy_loss=cases,
        kl=kl,
    )


def main():
    torch.manual_seed(0)
    inp = make_inputs()
    targets = sys.argv[1:] or ["trl", "verl"]
    if "trl" in targets:
        write("trl.json", make_trl(inp))
    if "verl" in targets:
        write("verl.json", make_verl(inp))


if __name__ == "__main__":
    main()
