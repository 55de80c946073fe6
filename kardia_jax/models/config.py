"""Model shape: one frozen dataclass for the Qwen2/2.5, Qwen3 and Llama decoders,
read from (and written back to) a Hugging Face `config.json`.

Every per-family fact (q/k/v bias, q/k norm, tied embeddings, rope theta, head
dim) is a field read from the checkpoint's config, never inferred from a size.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from typing import Any

from kardia_jax.errors import ConfigError

FAMILIES = ("qwen2", "qwen3", "llama")
ARCHITECTURES = {
    "qwen2": "Qwen2ForCausalLM",
    "qwen3": "Qwen3ForCausalLM",
    "llama": "LlamaForCausalLM",
}
# Rope variants we implement; anything else is refused rather than silently mis-rotated.
ROPE_TYPES = ("default", "linear", "llama3")
REMAT_POLICIES = ("none", "full", "dots", "dots_no_batch")
KERNELS = ("auto", "cpu", "xla", "tpu")  # see kardia_jax/models/kernels.py
DTYPES = ("float32", "bfloat16", "float16")


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Shape and numerics of a decoder-only transformer."""

    family: str  # "qwen2" (Qwen2 / Qwen2.5), "qwen3" or "llama"
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    rope_theta: float = 10_000.0
    rms_norm_eps: float = 1e-6
    tie_word_embeddings: bool = False
    qkv_bias: bool = False  # Qwen2: True; Llama / Qwen3: `attention_bias`
    o_bias: bool = False  # Llama / Qwen3 `attention_bias` also biases o_proj; Qwen2 never does
    mlp_bias: bool = False  # Llama `mlp_bias`
    qk_norm: bool = False  # Qwen3: per-head RMSNorm on q and k before rope
    # Rope scaling, flattened to hashable fields. rope_type "default" ignores the rest.
    rope_type: str = "default"
    rope_factor: float = 1.0
    rope_low_freq_factor: float = 1.0
    rope_high_freq_factor: float = 4.0
    rope_original_max_position: int = 8192
    max_position_embeddings: int = 32_768
    bos_token_id: int | None = None
    eos_token_id: int | tuple[int, ...] | None = None
    pad_token_id: int | None = None
    # generation_config.json as loaded (stop ids, sampling defaults), kept verbatim so
    # it can be written back; a string keeps the config hashable.
    generation_config_json: str | None = None
    # Numerics and execution (not part of the checkpoint).
    param_dtype: str = "float32"
    dtype: str = "float32"  # compute dtype of matmuls; softmax, norms and logits stay f32
    scan_layers: bool = False  # one compiled layer body scanned over stacked weights
    remat: str = "none"  # activation checkpointing policy per layer, see REMAT_POLICIES
    kernels: str = "auto"  # kernel forms for the target devices, see models/kernels.py

    def __post_init__(self):
        if self.family not in FAMILIES:
            raise ConfigError(f"family={self.family!r}: expected one of {FAMILIES}")
        if self.num_heads % self.num_kv_heads:
            raise ConfigError(
                f"num_attention_heads={self.num_heads} is not a multiple of "
                f"num_key_value_heads={self.num_kv_heads}"
            )
        if self.rope_type not in ROPE_TYPES:
            raise ConfigError(f"rope_type={self.rope_type!r}: expected one of {ROPE_TYPES}")
        if self.remat not in REMAT_POLICIES:
            raise ConfigError(f"remat={self.remat!r}: expected one of {REMAT_POLICIES}")
        if self.kernels not in KERNELS:
            raise ConfigError(f"kernels={self.kernels!r}: expected one of {KERNELS}")
        for name in ("param_dtype", "dtype"):
            if getattr(self, name) not in DTYPES:
                raise ConfigError(f"{name}={getattr(self, name)!r}: expected one of {DTYPES}")

    def replace(self, **kw) -> ModelConfig:
        return dataclasses.replace(self, **kw)

    @property
    def generation_config(self) -> dict[str, Any]:
        return json.loads(self.generation_config_json) if self.generation_config_json else {}

    @property
    def eos_ids(self) -> tuple[int, ...]:
        """Stop ids: the generation config's when it has them, else config.json's."""
        eos = self.generation_config.get("eos_token_id", self.eos_token_id)
        if eos is None:
            return ()
        return (int(eos),) if isinstance(eos, int) else tuple(int(e) for e in eos)

    def num_params(self) -> int:
        """Parameter count from the shape alone (what `jax.eval_shape` must agree with)."""
        d, f, v, h = self.hidden_size, self.intermediate_size, self.vocab_size, self.head_dim
        n, k = self.num_heads, self.num_kv_heads
        attn = d * n * h + 2 * d * k * h + n * h * d
        attn += (n * h + 2 * k * h) * self.qkv_bias + d * self.o_bias + 2 * h * self.qk_norm
        mlp = 3 * d * f + (2 * f + d) * self.mlp_bias
        layer = attn + mlp + 2 * d
        return v * d * (1 if self.tie_word_embeddings else 2) + self.num_layers * layer + d

    # ------------------------------------------------------------------ HF I/O
    @classmethod
    def from_hf_config(cls, hf: dict[str, Any], source: str = "config.json", **overrides):
        """Builds a config from a Hugging Face config dict (transformers 4 or 5 form)."""
        model_type = hf.get("model_type")
        if model_type not in FAMILIES:
            raise ConfigError(
                f"{source}: model_type={model_type!r} is not supported "
                f"(supported: {', '.join(FAMILIES)})"
            )

        def need(key):
            if key not in hf:
                raise ConfigError(f"{source}: missing required field {key!r}")
            return hf[key]

        hidden = int(need("hidden_size"))
        heads = int(need("num_attention_heads"))
        head_dim = hf.get("head_dim") or hidden // heads
        if model_type == "qwen2" and hf.get("use_sliding_window"):
            raise ConfigError(f"{source}: use_sliding_window=true is not supported")
        if hf.get("hidden_act", "silu") != "silu":
            raise ConfigError(
                f"{source}: hidden_act={hf['hidden_act']!r}; only 'silu' is supported"
            )
        if model_type == "qwen2":
            qkv_bias, o_bias = True, False
        else:
            qkv_bias = o_bias = bool(hf.get("attention_bias", False))
        rope = _rope_from_hf(hf, source)
        eos = hf.get("eos_token_id")
        if isinstance(eos, list):
            eos = tuple(eos) if len(eos) > 1 else eos[0]
        fields = dict(
            family=model_type,
            vocab_size=int(need("vocab_size")),
            hidden_size=hidden,
            intermediate_size=int(need("intermediate_size")),
            num_layers=int(need("num_hidden_layers")),
            num_heads=heads,
            num_kv_heads=int(hf.get("num_key_value_heads") or heads),
            head_dim=int(head_dim),
            rms_norm_eps=float(hf.get("rms_norm_eps", 1e-6)),
            tie_word_embeddings=bool(hf.get("tie_word_embeddings", False)),
            qkv_bias=qkv_bias,
            o_bias=o_bias,
            mlp_bias=bool(hf.get("mlp_bias", False)),
            qk_norm=model_type == "qwen3",
            max_position_embeddings=int(hf.get("max_position_embeddings", 32_768)),
            bos_token_id=hf.get("bos_token_id"),
            eos_token_id=eos,
            pad_token_id=hf.get("pad_token_id"),
            **rope,
        )
        fields.update(overrides)
        return cls(**fields)

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike, **overrides) -> ModelConfig:
        file = os.path.join(path, "config.json")
        if not os.path.isfile(file):
            raise ConfigError(f"{path}: no config.json (is this a Hugging Face checkpoint dir?)")
        try:
            with open(file, encoding="utf-8") as f:
                hf = json.load(f)
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ConfigError(f"{file}: not valid JSON ({e})") from None
        return cls.from_hf_config(hf, source=file, **overrides)

    def to_hf_config(self) -> dict[str, Any]:
        """The config.json transformers needs to rebuild this model (transformers 4 form,
        which transformers 5 also reads)."""
        hf: dict[str, Any] = {
            "architectures": [ARCHITECTURES[self.family]],
            "model_type": self.family,
            "vocab_size": self.vocab_size,
            "hidden_size": self.hidden_size,
            "intermediate_size": self.intermediate_size,
            "num_hidden_layers": self.num_layers,
            "num_attention_heads": self.num_heads,
            "num_key_value_heads": self.num_kv_heads,
            "head_dim": self.head_dim,
            "hidden_act": "silu",
            "rms_norm_eps": self.rms_norm_eps,
            "rope_theta": self.rope_theta,
            "rope_scaling": self._hf_rope_scaling(),
            "max_position_embeddings": self.max_position_embeddings,
            "tie_word_embeddings": self.tie_word_embeddings,
            "attention_dropout": 0.0,
            "initializer_range": 0.02,
            "use_cache": True,
            "torch_dtype": self.param_dtype,
            "bos_token_id": self.bos_token_id,
            "eos_token_id": list(self.eos_token_id)
            if isinstance(self.eos_token_id, tuple)
            else self.eos_token_id,
        }
        if self.pad_token_id is not None:
            hf["pad_token_id"] = self.pad_token_id
        if self.family == "qwen2":
            hf.update(
                use_sliding_window=False, sliding_window=None, max_window_layers=self.num_layers
            )
        else:
            hf["attention_bias"] = self.qkv_bias
        if self.family == "llama":
            hf.update(mlp_bias=self.mlp_bias, pretraining_tp=1)
        return hf

    def _hf_rope_scaling(self) -> dict[str, Any] | None:
        if self.rope_type == "default":
            return None
        out: dict[str, Any] = {"rope_type": self.rope_type, "factor": self.rope_factor}
        if self.rope_type == "llama3":
            out.update(
                low_freq_factor=self.rope_low_freq_factor,
                high_freq_factor=self.rope_high_freq_factor,
                original_max_position_embeddings=self.rope_original_max_position,
            )
        return out


def _rope_from_hf(hf: dict[str, Any], source: str) -> dict[str, Any]:
    """Reads rope settings from either config form.

    transformers 4: top-level `rope_theta` plus an optional `rope_scaling` dict.
    transformers 5: a `rope_parameters` dict holding `rope_type`, `rope_theta` and the
    scaling fields together.
    """
    params = hf.get("rope_parameters")
    if isinstance(params, dict) and params:
        if "full_attention" in params and isinstance(params["full_attention"], dict):
            params = params["full_attention"]  # per-layer-type form; all our layers are full
        theta = params.get("rope_theta", hf.get("rope_theta", 10_000.0))
        scaling = params
        field = "rope_parameters"
    else:
        theta = hf.get("rope_theta", 10_000.0)
        scaling = hf.get("rope_scaling") or {}
        field = "rope_scaling"
    rope_type = scaling.get("rope_type", scaling.get("type", "default")) or "default"
    if rope_type not in ROPE_TYPES:
        raise ConfigError(
            f"{source}: {field}.rope_type={rope_type!r} is not implemented "
            f"(supported: {', '.join(ROPE_TYPES)})"
        )
    out = {"rope_theta": float(theta), "rope_type": rope_type}
    if rope_type in ("linear", "llama3"):
        if "factor" not in scaling:
            raise ConfigError(f"{source}: {field} with rope_type={rope_type!r} needs 'factor'")
        out["rope_factor"] = float(scaling["factor"])
    if rope_type == "llama3":
        for key, name in (
            ("low_freq_factor", "rope_low_freq_factor"),
            ("high_freq_factor", "rope_high_freq_factor"),
            ("original_max_position_embeddings", "rope_original_max_position"),
        ):
            if key not in scaling:
                raise ConfigError(f"{source}: {field} with rope_type='llama3' needs {key!r}")
            out[name] = scaling[key]
        out["rope_original_max_position"] = int(out["rope_original_max_position"])
    if not math.isfinite(out["rope_theta"]) or out["rope_theta"] <= 0:
        raise ConfigError(f"{source}: rope_theta={theta!r} must be a positive number")
    return out
