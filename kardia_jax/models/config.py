"""Model shape: one frozen dataclass for the Qwen2/2.5, Qwen3, Llama, Gemma, Gemma 2
and Gemma 3 (text) decoders, read from (and written back to) a Hugging Face
`config.json`.

Every per-family fact (q/k/v bias, q/k norm, tied embeddings, rope theta, head
dim, Gemma's norms, soft-caps and sliding windows) is a field read from the
checkpoint's config, never inferred from a size.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from typing import Any

from kardia_jax.errors import ConfigError

FAMILIES = ("qwen2", "qwen3", "llama", "gemma", "gemma2", "gemma3_text")
GEMMA_FAMILIES = ("gemma", "gemma2", "gemma3_text")
ARCHITECTURES = {
    "qwen2": "Qwen2ForCausalLM",
    "qwen3": "Qwen3ForCausalLM",
    "llama": "LlamaForCausalLM",
    "gemma": "GemmaForCausalLM",
    "gemma2": "Gemma2ForCausalLM",
    "gemma3_text": "Gemma3ForCausalLM",
}
# MLP gate activations: SwiGLU (Qwen, Llama) and GeGLU with tanh-approximated GELU
# (Gemma; transformers' "gelu_pytorch_tanh").
ACTIVATIONS = ("silu", "gelu_pytorch_tanh")
LAYER_TYPES = ("full_attention", "sliding_attention")  # transformers' per-layer names
# What transformers' config classes assume for a field config.json leaves out
# (GemmaConfig, Gemma2Config, Gemma3TextConfig in transformers 5; tests compare them
# with the classes). A Gemma 3 multimodal config.json states only the text fields
# that differ from these.
_HF_DEFAULTS = {
    "gemma": dict(
        vocab_size=256_000,
        hidden_size=3072,
        intermediate_size=24_576,
        num_hidden_layers=28,
        num_attention_heads=16,
        num_key_value_heads=16,
        head_dim=256,
        max_position_embeddings=8192,
        rms_norm_eps=1e-6,
        pad_token_id=0,
        eos_token_id=1,
        bos_token_id=2,
        tie_word_embeddings=True,
        rope_theta=10_000.0,
    ),
    "gemma2": dict(
        vocab_size=256_000,
        hidden_size=2304,
        intermediate_size=9216,
        num_hidden_layers=26,
        num_attention_heads=8,
        num_key_value_heads=4,
        head_dim=256,
        max_position_embeddings=8192,
        rms_norm_eps=1e-6,
        pad_token_id=0,
        eos_token_id=1,
        bos_token_id=2,
        tie_word_embeddings=True,
        rope_theta=10_000.0,
        query_pre_attn_scalar=256,
        sliding_window=4096,
        final_logit_softcapping=30.0,
        attn_logit_softcapping=50.0,
    ),
    "gemma3_text": dict(
        vocab_size=262_208,
        hidden_size=2304,
        intermediate_size=9216,
        num_hidden_layers=26,
        num_attention_heads=8,
        num_key_value_heads=4,
        head_dim=256,
        max_position_embeddings=131_072,
        rms_norm_eps=1e-6,
        pad_token_id=0,
        eos_token_id=1,
        bos_token_id=2,
        tie_word_embeddings=True,
        rope_theta=1_000_000.0,
        rope_local_base_freq=10_000.0,
        query_pre_attn_scalar=256,
        sliding_window=4096,
        final_logit_softcapping=None,
        attn_logit_softcapping=None,
    ),
}
# Gemma 3's local:global layer pattern when config.json has no `layer_types`.
_GEMMA3_SLIDING_PATTERN = 6
# Rope variants we implement; anything else is refused rather than silently mis-rotated.
ROPE_TYPES = ("default", "linear", "llama3")
REMAT_POLICIES = ("none", "full", "dots", "dots_no_batch")
KERNELS = ("auto", "cpu", "xla", "tpu")  # see kardia_jax/models/kernels.py
DTYPES = ("float32", "bfloat16", "float16")


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Shape and numerics of a decoder-only transformer."""

    family: str  # "qwen2" (Qwen2 / Qwen2.5), "qwen3", "llama", "gemma", "gemma2", "gemma3_text"
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
    qk_norm: bool = False  # Qwen3, Gemma 3: per-head RMSNorm on q and k before rope
    hidden_act: str = "silu"  # MLP gate activation, see ACTIVATIONS
    # Gemma: embeddings times sqrt(hidden_size), the factor rounded to the compute dtype.
    scale_embeddings: bool = False
    norm_plus_one: bool = False  # Gemma: RMSNorm multiplies by (1 + weight), weights start at 0
    # Gemma 2 / 3: RMSNorm also after attention and after the MLP, before each residual
    # add (`post_attention_layernorm` then norms the attention output, and
    # `pre_feedforward_layernorm` the MLP input).
    sandwich_norms: bool = False
    # Attention logits are scaled by query_pre_attn_scalar ** -0.5 (Gemma 2 / 3);
    # None: head_dim ** -0.5.
    query_pre_attn_scalar: float | None = None
    attn_logit_softcap: float | None = None  # Gemma 2: cap * tanh(logit / cap) before the mask
    final_logit_softcap: float | None = None  # Gemma 2: the same on the output logits
    # Per-layer attention, transformers' `layer_types`: "sliding_attention" layers see
    # the last `sliding_window` positions (their own included); () means all full.
    layer_types: tuple[str, ...] = ()
    sliding_window: int | None = None
    # Gemma 3: sliding layers rotate with this base and no rope scaling (the global
    # layers use rope_theta and the scaling below); None: every layer the same rope.
    rope_local_theta: float | None = None
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
        if self.hidden_act not in ACTIVATIONS:
            raise ConfigError(f"hidden_act={self.hidden_act!r}: expected one of {ACTIVATIONS}")
        if self.layer_types:
            if len(self.layer_types) != self.num_layers:
                raise ConfigError(
                    f"layer_types has {len(self.layer_types)} entries for "
                    f"num_hidden_layers={self.num_layers}"
                )
            bad = sorted(set(self.layer_types) - set(LAYER_TYPES))
            if bad:
                raise ConfigError(f"layer_types: {bad[0]!r} is not one of {LAYER_TYPES}")
        if any(self.local_layers) and not (self.sliding_window and self.sliding_window > 0):
            raise ConfigError(
                f"sliding_window={self.sliding_window!r}: sliding_attention layers need a "
                "positive window"
            )
        for name in ("attn_logit_softcap", "final_logit_softcap", "query_pre_attn_scalar"):
            value = getattr(self, name)
            if value is not None and not value > 0:
                raise ConfigError(f"{name}={value!r} must be positive (or None)")
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
    def local_layers(self) -> tuple[bool, ...]:
        """Per layer: True for a sliding-window (local) layer."""
        if not self.layer_types:
            return (False,) * self.num_layers
        return tuple(t == "sliding_attention" for t in self.layer_types)

    @property
    def attention_scale(self) -> float:
        """The factor on q.k: 1/sqrt(query_pre_attn_scalar), else 1/sqrt(head_dim)."""
        return 1.0 / math.sqrt(self.query_pre_attn_scalar or self.head_dim)

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
        layer = attn + mlp + (4 if self.sandwich_norms else 2) * d
        return v * d * (1 if self.tie_word_embeddings else 2) + self.num_layers * layer + d

    # ------------------------------------------------------------------ HF I/O
    @classmethod
    def from_hf_config(cls, hf: dict[str, Any], source: str = "config.json", **overrides):
        """Builds a config from a Hugging Face config dict (transformers 4 or 5 form).

        A Gemma 3 multimodal config (`model_type` "gemma3") gives its language model,
        `text_config`: the result is the text decoder alone (`gemma3_text`).
        """
        model_type = hf.get("model_type")
        if model_type == "gemma3":
            hf, model_type = gemma3_text_config(hf, source), "gemma3_text"
        if model_type not in FAMILIES:
            raise ConfigError(
                f"{source}: model_type={model_type!r} is not supported "
                f"(supported: {', '.join(FAMILIES)}, gemma3)"
            )
        gemma = model_type in GEMMA_FAMILIES
        if gemma:
            hf = {**_HF_DEFAULTS[model_type], **hf}

        def need(key):
            if key not in hf:
                raise ConfigError(f"{source}: missing required field {key!r}")
            return hf[key]

        hidden = int(need("hidden_size"))
        heads = int(need("num_attention_heads"))
        head_dim = hf.get("head_dim") or hidden // heads
        if model_type in ("qwen2", "qwen3") and hf.get("use_sliding_window"):
            raise ConfigError(f"{source}: use_sliding_window=true is not supported")
        if hf.get("use_bidirectional_attention"):
            raise ConfigError(f"{source}: use_bidirectional_attention=true is not supported")
        act_field, act = _hidden_act(hf, model_type)
        if act not in ACTIVATIONS:
            raise ConfigError(
                f"{source}: {act_field}={act!r} is not supported (supported: "
                f"{', '.join(ACTIVATIONS)})"
            )
        if model_type == "qwen2":
            qkv_bias, o_bias = True, False
        else:
            qkv_bias = o_bias = bool(hf.get("attention_bias", False))
        rope = _rope_from_hf(hf, source)
        if model_type == "gemma3_text":
            rope["rope_local_theta"] = _local_rope_theta(hf, source)
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
            qk_norm=model_type in ("qwen3", "gemma3_text"),
            hidden_act=act,
            scale_embeddings=gemma,
            norm_plus_one=gemma,
            max_position_embeddings=int(hf.get("max_position_embeddings", 32_768)),
            bos_token_id=hf.get("bos_token_id"),
            eos_token_id=eos,
            pad_token_id=hf.get("pad_token_id"),
            **rope,
        )
        if model_type in ("gemma2", "gemma3_text"):
            fields.update(
                sandwich_norms=True,
                query_pre_attn_scalar=_optional_float(hf, "query_pre_attn_scalar", source),
                attn_logit_softcap=_optional_float(hf, "attn_logit_softcapping", source),
                final_logit_softcap=_optional_float(hf, "final_logit_softcapping", source),
                layer_types=_layer_types(hf, model_type, int(need("num_hidden_layers")), source),
            )
            window = hf.get("sliding_window")
            fields["sliding_window"] = None if window is None else int(window)
            if any(t == "sliding_attention" for t in fields["layer_types"]) and not (
                window and int(window) > 0
            ):
                raise ConfigError(
                    f"{source}: sliding_window={window!r}, but layer_types has sliding layers"
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
            "hidden_act": self.hidden_act,
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
        if self.family in GEMMA_FAMILIES:
            # Gemma 2 / 3 read `hidden_activation`; Gemma reads `hidden_act`.
            hf["hidden_activation"] = self.hidden_act
        if self.family in ("gemma2", "gemma3_text"):
            hf.update(
                # transformers' strict config class types it int (256, 144).
                query_pre_attn_scalar=_int_if_whole(self.query_pre_attn_scalar),
                attn_logit_softcapping=self.attn_logit_softcap,
                final_logit_softcapping=self.final_logit_softcap,
                sliding_window=self.sliding_window,
                layer_types=list(self.layer_types or ("full_attention",) * self.num_layers),
                use_bidirectional_attention=False,
            )
        if self.family == "gemma3_text":
            hf["rope_local_base_freq"] = self.rope_local_theta or self.rope_theta
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
            # Per-layer-type form (Gemma 3): the full layers' rope here, the sliding
            # layers' in `_local_rope_theta`.
            params = params["full_attention"]
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


def gemma3_text_config(hf: dict[str, Any], source: str) -> dict[str, Any]:
    """The language model's config of a Gemma 3 multimodal config.json: its
    `text_config`, with the token ids and head tying the wrapper states where the
    text config does not (transformers 4.50+ writes stop ids at the top level)."""
    text = hf.get("text_config")
    if text is None:
        text = {}
    if not isinstance(text, dict):
        raise ConfigError(f"{source}: text_config must be an object")
    inherited = {
        k: hf[k]
        for k in ("bos_token_id", "eos_token_id", "pad_token_id", "tie_word_embeddings")
        if hf.get(k) is not None
    }
    return {**inherited, **text, "model_type": "gemma3_text"}


def _int_if_whole(x: float | None) -> float | int | None:
    return int(x) if x is not None and float(x).is_integer() else x


def _hidden_act(hf: dict[str, Any], model_type: str) -> tuple[str, str]:
    """(field, activation) as transformers reads it for this family: Gemma 2 / 3 read
    `hidden_activation`; Gemma `hidden_act`, its legacy "gelu" meaning the tanh
    approximation (GemmaConfig converts it); the others `hidden_act`."""
    if model_type in ("gemma2", "gemma3_text"):
        return "hidden_activation", hf.get("hidden_activation") or "gelu_pytorch_tanh"
    if model_type == "gemma":
        act = hf.get("hidden_act") or "gelu_pytorch_tanh"
        return "hidden_act", "gelu_pytorch_tanh" if act == "gelu" else act
    return "hidden_act", hf.get("hidden_act") or "silu"


def _optional_float(hf: dict[str, Any], key: str, source: str) -> float | None:
    value = hf.get(key)
    if value is None:
        return None
    try:
        value = float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{source}: {key}={hf[key]!r} is not a number") from None
    if not (math.isfinite(value) and value > 0):
        raise ConfigError(f"{source}: {key}={hf[key]!r} must be a positive number")
    return value


def _layer_types(hf: dict[str, Any], model_type: str, layers: int, source: str):
    """Per-layer attention types: `layer_types` (transformers >= 4.53), else the
    pattern transformers derives: Gemma 2 alternates sliding / full from layer 0;
    Gemma 3 has `sliding_window_pattern` - 1 sliding layers before each full one."""
    types = hf.get("layer_types")
    if types is None:
        if model_type == "gemma2":
            pattern = 2
        else:
            pattern = hf.get("sliding_window_pattern") or hf.get("_sliding_window_pattern")
            pattern = int(pattern or _GEMMA3_SLIDING_PATTERN)
        types = [
            "sliding_attention" if (i + 1) % pattern else "full_attention" for i in range(layers)
        ]
    if not isinstance(types, list | tuple) or len(types) != layers:
        raise ConfigError(f"{source}: layer_types must list one type per layer ({layers})")
    bad = sorted({t for t in types if t not in LAYER_TYPES}, key=str)
    if bad:
        raise ConfigError(
            f"{source}: layer_types entry {bad[0]!r} is not supported "
            f"(supported: {', '.join(LAYER_TYPES)})"
        )
    return tuple(types)


def _local_rope_theta(hf: dict[str, Any], source: str) -> float:
    """Gemma 3's rope base of the sliding layers: transformers 5's
    `rope_parameters.sliding_attention`, else transformers 4's `rope_local_base_freq`.
    Only unscaled rope is implemented there."""
    params = hf.get("rope_parameters")
    local = params.get("sliding_attention") if isinstance(params, dict) else None
    if isinstance(local, dict):
        rope_type = local.get("rope_type", local.get("type", "default")) or "default"
        if rope_type != "default":
            raise ConfigError(
                f"{source}: rope_parameters.sliding_attention.rope_type={rope_type!r} "
                "is not implemented (supported: default)"
            )
        theta = local.get("rope_theta", hf.get("rope_local_base_freq"))
        field = "rope_parameters.sliding_attention.rope_theta"
    else:
        theta, field = hf.get("rope_local_base_freq"), "rope_local_base_freq"
    try:
        theta = float(theta)
    except (TypeError, ValueError):
        raise ConfigError(f"{source}: {field}={theta!r} is not a number") from None
    if not math.isfinite(theta) or theta <= 0:
        raise ConfigError(f"{source}: {field}={theta!r} must be a positive number")
    return theta
