"""Hugging Face checkpoints in and out: `config.json` + safetensors (single file or
sharded with an index), loaded straight into the target sharding and written back
in a form `transformers.AutoModelForCausalLM.from_pretrained` loads without warnings.

The map between our parameters and Hugging Face tensors is one rule: same path,
`kernel`/`scale`/`embedding` are called `weight`, and a kernel is the transposed
Hugging Face weight with its fused head dims split out (`_Layout`). The decoder's
tensors sit under `model.`, or in a Gemma 3 multimodal checkpoint under its
language model's prefix (`_Naming`), whose vision tensors are left unread.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import Mesh, NamedSharding, SingleDeviceSharding
from safetensors import SafetensorError, safe_open
from safetensors.numpy import save_file

from kardia_jax.errors import CheckpointError, ConfigError
from kardia_jax.jsonio import write_json
from kardia_jax.models import kernels
from kardia_jax.models.config import ModelConfig
from kardia_jax.models.decoder import Transformer, abstract_model
from kardia_jax.sharding import DEFAULT_RULES, Rules, batch_sharding, head_axes, param_shardings

WEIGHTS_NAME = "model.safetensors"
INDEX_NAME = "model.safetensors.index.json"
_LEAF_NAMES = {"kernel": "weight", "scale": "weight", "embedding": "weight", "bias": "bias"}
_IN_DIMS = {"o_proj": 2}  # kernels contract this many leading dims; every other kernel one
# Tensors some checkpoints carry that the model legitimately ignores.
_IGNORED_SUFFIXES = ("rotary_emb.inv_freq",)


@dataclasses.dataclass(frozen=True)
class _Naming:
    """Where a checkpoint keeps the decoder: `body` prefixes every tensor but the
    untied output projection, `head`."""

    body: str
    head: str


_CAUSAL_LM = _Naming("model.", "lm_head.weight")  # *ForCausalLM, and what we write
# Gemma3ForConditionalGeneration: transformers >= 4.52 writes the first form, the
# published checkpoints (4.50) the second; either loads.
_NAMINGS = (
    _CAUSAL_LM,
    _Naming("model.language_model.", "lm_head.weight"),
    _Naming("language_model.model.", "language_model.lm_head.weight"),
)


def _naming(names: set[str]) -> _Naming:
    """The naming whose embedding table the checkpoint has (the plain one if none:
    the missing-tensor check then names what is missing)."""
    for naming in _NAMINGS:
        if naming.body + "embed_tokens.weight" in names:
            return naming
    return _CAUSAL_LM


# ------------------------------------------------------------------- tensor layout
@dataclasses.dataclass(frozen=True)
class _Layout:
    """ours = hf.reshape(split).transpose(perm); `groups[j]` = split dims of hf dim j."""

    split: tuple[int, ...]
    perm: tuple[int, ...]
    groups: tuple[int, ...]

    @property
    def hf_shape(self) -> tuple[int, ...]:
        out, pos = [], 0
        for g in self.groups:
            out.append(math.prod(self.split[pos : pos + g]))
            pos += g
        return tuple(out)

    def to_ours(self, hf: np.ndarray) -> np.ndarray:
        return hf.reshape(self.split).transpose(self.perm)

    def to_hf(self, ours: np.ndarray) -> np.ndarray:
        return ours.transpose(np.argsort(self.perm)).reshape(self.hf_shape)

    def read(self, file: TensorFile, name: str, index: tuple[slice, ...]) -> np.ndarray:
        """Reads only the Hugging Face rows/cols behind `ours[index]`."""
        split_idx = [slice(None)] * len(self.split)
        for i, p in enumerate(self.perm):
            start, stop, step = index[i].indices(self.split[p])
            assert step == 1, "shards are contiguous"
            split_idx[p] = slice(start, stop)
        hf_idx, block_shape, post, pos = [], [], [], 0
        for g in self.groups:
            first, rest = split_idx[pos], self.split[pos + 1 : pos + g]
            block = math.prod(rest)  # rows of the fused dim per step of the first split dim
            hf_idx.append(slice(first.start * block, first.stop * block))
            block_shape += [first.stop - first.start, *rest]
            post += [slice(None), *split_idx[pos + 1 : pos + g]]
            pos += g
        arr = file.read(name, tuple(hf_idx)).reshape(block_shape)[tuple(post)]
        return arr.transpose(self.perm)


def _layout(path: tuple, shape: tuple[int, ...]) -> _Layout:
    leaf, module = path[-1], path[-2]
    nd = len(shape)
    if leaf == "kernel":
        n_in = _IN_DIMS.get(module, 1)
        n_out = nd - n_in
        split = shape[n_in:] + shape[:n_in]  # hf weights are [out, in]
        perm = tuple(range(n_out, nd)) + tuple(range(n_out))
        return _Layout(split, perm, (n_out, n_in))
    if leaf == "bias":
        return _Layout(shape, tuple(range(nd)), (nd,))
    return _Layout(shape, tuple(range(nd)), (1,) * nd)


def _hf_name(path: tuple, naming: _Naming = _CAUSAL_LM) -> str:
    if path[0] == "lm_head":
        return naming.head
    parts = [str(p) for p in path[:-1]] + [_LEAF_NAMES[path[-1]]]
    return naming.body + ".".join(parts)


def _entries(
    state: nnx.State, cfg: ModelConfig, naming: _Naming = _CAUSAL_LM
) -> Iterator[tuple[tuple, str, int | None, _Layout]]:
    """(our path, hf name, layer index into a stacked param or None, layout) per tensor."""
    for path, var in nnx.to_flat_state(state):
        shape = tuple(var.get_value().shape)
        if cfg.scan_layers and path[0] == "layers":
            layout = _layout(path, shape[1:])
            for i in range(shape[0]):
                yield path, _hf_name(("layers", i, *path[1:]), naming), i, layout
        else:
            yield path, _hf_name(path, naming), None, _layout(path, shape)


# -------------------------------------------------------------------------- reading
class TensorFile:
    """One .safetensors file opened with the `safetensors` library: opening parses
    only the header, and `read` copies out just the requested slice of the
    memory-mapped data, so a host touches only the shards its devices hold."""

    def __init__(self, path: str):
        self.path = path
        try:
            self._file = safe_open(path, framework="numpy")
            names = self._file.keys()  # a list: the handle itself is not iterable
            self._shapes = {n: tuple(self._file.get_slice(n).get_shape()) for n in names}
        except OSError as e:
            raise CheckpointError(f"{path}: cannot read ({e})") from None
        except SafetensorError as e:
            raise CheckpointError(
                f"{path}: not a valid safetensors file, truncated or corrupt ({e})"
            ) from None

    def names(self) -> list[str]:
        return list(self._shapes)

    def shape(self, name: str) -> tuple[int, ...]:
        return self._shapes[name]

    def read(self, name: str, index: tuple[slice, ...] | None = None) -> np.ndarray:
        """A copy of `tensor[index]` (contiguous slices); bfloat16 comes back as ml_dtypes'."""
        try:
            if index is None:
                return self._file.get_tensor(name)
            return np.asarray(self._file.get_slice(name)[index])
        except SafetensorError as e:
            raise CheckpointError(f"{self.path}: cannot read tensor {name!r} ({e})") from None


class CheckpointFiles:
    """The safetensors files of a checkpoint dir, addressed by tensor name."""

    def __init__(self, path: str):
        self.path = path
        index_file = os.path.join(path, INDEX_NAME)
        single = os.path.join(path, WEIGHTS_NAME)
        if os.path.isfile(index_file):
            try:
                with open(index_file, encoding="utf-8") as f:
                    weight_map = json.load(f)["weight_map"]
            except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError) as e:
                raise CheckpointError(
                    f"{index_file}: not a valid safetensors index ({e})"
                ) from None
            files = {}
            for fname in sorted(set(weight_map.values())):
                full = os.path.join(path, fname)
                if not os.path.isfile(full):
                    raise CheckpointError(f"{index_file}: lists {fname!r}, which does not exist")
                files[fname] = TensorFile(full)
            self._where = {}
            for name, fname in weight_map.items():
                if name not in files[fname].names():
                    raise CheckpointError(f"{index_file}: {name!r} is not in {fname!r}")
                self._where[name] = files[fname]
        elif os.path.isfile(single):
            f = TensorFile(single)
            self._where = {name: f for name in f.names()}
        else:
            other = [n for n in os.listdir(path) if n.endswith((".bin", ".pt", ".pth", ".ckpt"))]
            hint = f" (found {other[0]!r}: pickled weights are never loaded)" if other else ""
            raise CheckpointError(f"{path}: no {WEIGHTS_NAME} or {INDEX_NAME}{hint}")

    def names(self) -> set[str]:
        return set(self._where)

    def file(self, name: str) -> TensorFile:
        return self._where[name]


def _read_generation_config(path: str) -> str | None:
    file = os.path.join(path, "generation_config.json")
    if not os.path.isfile(file):
        return None
    try:
        with open(file, encoding="utf-8") as f:
            return json.dumps(json.load(f), sort_keys=True)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{file}: not valid JSON ({e})") from None


def _dtype_name(dtype) -> str:
    return jnp.dtype(dtype).name


def check_hf_checkpoint(
    path: str | os.PathLike, dtype="float32", *, compute_dtype=None, **config_overrides
) -> ModelConfig:
    """What `load_hf_model` checks before it reads any tensor data: config.json, the
    safetensors headers, every tensor's presence and shape. Returns the config;
    reads no weights (a run's preflight)."""
    return _inspect(path, dtype, compute_dtype=compute_dtype, **config_overrides)[0]


def _inspect(path, dtype, *, compute_dtype=None, **config_overrides):
    path = os.fspath(path)
    if not os.path.isdir(path):
        raise CheckpointError(f"{path}: not a directory")
    cfg = ModelConfig.from_pretrained(
        path,
        param_dtype=_dtype_name(dtype),
        dtype=_dtype_name(compute_dtype or dtype),
        generation_config_json=_read_generation_config(path),
        **config_overrides,
    )
    files = CheckpointFiles(path)
    graphdef, state = nnx.split(abstract_model(cfg))
    naming = _naming(files.names())
    entries = list(_entries(state, cfg, naming))

    missing = [name for _, name, _, _ in entries if name not in files.names()]
    if missing:
        more = f" and {len(missing) - 3} more" if len(missing) > 3 else ""
        raise CheckpointError(f"{path}: missing tensor(s) {', '.join(missing[:3])}{more}")
    for _, name, _, layout in entries:
        have = files.file(name).shape(name)
        if have != layout.hf_shape:
            raise CheckpointError(
                f"{files.file(name).path}: tensor {name!r} has shape {list(have)}, "
                f"config.json implies {list(layout.hf_shape)}"
            )
    expected = {name for _, name, _, _ in entries}
    if cfg.tie_word_embeddings:
        expected.add(naming.head)  # some tied checkpoints store the copy; unused
    unexpected = sorted(
        n
        for n in files.names() - expected
        if not n.endswith(_IGNORED_SUFFIXES) and _is_decoder_tensor(n, naming)
    )
    if unexpected:
        raise CheckpointError(
            f"{path}: tensor(s) not in the model described by config.json: "
            f"{', '.join(unexpected[:3])}" + (" ..." if len(unexpected) > 3 else "")
        )
    return cfg, files, graphdef, state, entries


def _is_decoder_tensor(name: str, naming: _Naming) -> bool:
    """Whether a tensor belongs to the decoder: all of a causal LM's; in a multimodal
    checkpoint those under the language model's prefix (the vision tower and the
    projector are not read)."""
    return naming == _CAUSAL_LM or name.startswith(naming.body) or name == naming.head


def load_hf_model(
    path: str | os.PathLike,
    dtype="float32",
    mesh: Mesh | None = None,
    *,
    compute_dtype=None,
    rules: Rules = DEFAULT_RULES,
    **config_overrides,
) -> Transformer:
    """Loads a Hugging Face checkpoint dir into a `Transformer`.

    `dtype` is the parameter dtype; `compute_dtype` (default: `dtype`) the matmul
    dtype. With a `mesh`, every tensor is placed by the sharding `rules` and each
    host reads only the slices its own devices hold, and the model's activations are
    pinned to the batch layout (`Transformer.constrain_activations`). Every tensor is checked for
    presence and shape before any data is read: nothing loads partially.
    """
    # The kernel forms for the devices the model will run on (models/kernels.py).
    config_overrides["kernels"] = kernels.of(config_overrides.get("kernels", "auto"), mesh)
    cfg, files, graphdef, state, entries = _inspect(
        path, dtype, compute_dtype=compute_dtype, **config_overrides
    )
    shardings = (
        dict(nnx.to_flat_state(param_shardings(state, mesh, rules))) if mesh is not None else None
    )
    by_path: dict[tuple, list] = {}
    for p, name, layer, layout in entries:
        by_path.setdefault(p, []).append((name, layer, layout))
    flat = []
    for p, var in nnx.to_flat_state(state):
        sharding = (
            shardings[p].get_value()
            if shardings is not None
            else SingleDeviceSharding(jax.local_devices()[0])
        )
        arr = _load_array(
            files, by_path[p], var.get_value().shape, np.dtype(cfg.param_dtype), sharding
        )
        flat.append((p, var.replace(arr)))
    model = nnx.merge(graphdef, nnx.from_flat_state(flat))
    if mesh is not None:
        # The activations follow the batch as the trained policy's do (see
        # `Transformer.constrain_activations`), for every model read onto a mesh:
        # the frozen reference, the judge, the evaluated policy.
        model.constrain_activations(batch_sharding(mesh, rules, ndim=1), head_axes(mesh, rules))
    return model


def _load_array(files, parts, shape, dtype, sharding) -> jax.Array:
    """Builds one (possibly sharded) array, reading each device's slice on demand."""
    cache: dict[tuple, np.ndarray] = {}  # replicas of one shard are read once

    def read(index):
        index = tuple(index) + (slice(None),) * (len(shape) - len(index))
        key = tuple(s.indices(n) for s, n in zip(index, shape, strict=True))
        if key not in cache:
            if parts[0][1] is None:  # one tensor
                name, _, layout = parts[0]
                block = layout.read(files.file(name), name, index)
            else:  # stacked layers: the leading index selects layers
                lo, hi, _ = index[0].indices(shape[0])
                block = np.stack(
                    [lay.read(files.file(n), n, index[1:]) for n, _, lay in parts[lo:hi]]
                )
            cache[key] = block.astype(dtype)
        return cache[key]

    return jax.make_array_from_callback(tuple(shape), sharding, read)


# -------------------------------------------------------------------------- writing
def _to_host(x: jax.Array) -> np.ndarray:
    if x.is_fully_addressable:
        return np.asarray(x)
    from jax.experimental import multihost_utils

    return np.asarray(multihost_utils.process_allgather(x, tiled=True))


def save_hf_model(
    model: Transformer,
    path: str | os.PathLike,
    *,
    dtype=None,
    max_shard_bytes: int = 5 * 2**30,
    tokenizer=None,
) -> None:
    """Writes config.json, generation_config.json and safetensors weights (sharded
    with an index beyond `max_shard_bytes`), atomically: the directory appears
    complete or not at all, and an existing one is replaced only after success.

    Multi-host: every process must call this (tensors are gathered one at a
    time); process 0 writes.
    """
    path = os.path.abspath(os.fspath(path))
    if os.path.exists(path) and not os.path.isdir(path):
        raise CheckpointError(f"{path}: exists and is not a directory")
    cfg: ModelConfig = model.config
    out_dtype = np.dtype(_dtype_name(dtype or cfg.param_dtype))
    state = nnx.state(model, nnx.Param)
    values = {p: v.get_value() for p, v in nnx.to_flat_state(state)}

    def produce(p, layer, layout):
        def f():
            x = values[p] if layer is None else values[p][layer]
            return layout.to_hf(_to_host(x)).astype(out_dtype)

        return f

    entries = [
        (name, layout.hf_shape, out_dtype, produce(p, layer, layout))
        for p, name, layer, layout in _entries(state, cfg)
    ]
    writer = jax.process_index() == 0
    if not writer:
        for *_, f in entries:
            f()  # take part in the gathers
        return

    def fill(tmp: str) -> None:
        _write_weights(tmp, entries, max_shard_bytes)
        hf_config = cfg.to_hf_config()
        hf_config["torch_dtype"] = out_dtype.name
        write_json(os.path.join(tmp, "config.json"), hf_config, sort_keys=True, default=None)
        gen = cfg.generation_config or {
            k: v
            for k, v in (
                ("bos_token_id", cfg.bos_token_id),
                ("eos_token_id", hf_config["eos_token_id"]),
            )
            if v is not None
        }
        write_json(os.path.join(tmp, "generation_config.json"), gen, sort_keys=True, default=None)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)

    publish_dir(path, fill)


def publish_dir(path: str, fill: Callable[[str], None]) -> None:
    """Writes a folder by `fill(tmp)` into a temporary dir beside `path`, then swaps
    it in by renames: a reader sees the old folder or the new one, never half of one,
    and a failure leaves the old one as it was."""
    parent = os.path.dirname(os.path.abspath(path))
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(path)}.tmp-", dir=parent)
    try:
        fill(tmp)
        os.chmod(tmp, 0o755)
        if os.path.exists(path):
            old = tempfile.mkdtemp(prefix=f".{os.path.basename(path)}.old-", dir=parent)
            os.rename(path, os.path.join(old, "d"))
            os.rename(tmp, path)
            shutil.rmtree(old)
        else:
            os.rename(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def write_shard(path: str, entries) -> None:
    """Writes one safetensors file from `(name, shape, dtype, produce)` entries through
    the `safetensors` library, which takes the whole shard at once: `max_shard_bytes`
    bounds the host memory a save needs. fsync'd, since the caller publishes the
    directory by renaming it."""
    tensors = {}
    for name, shape, dtype, produce in entries:
        arr = np.ascontiguousarray(produce(), dtype=dtype)
        if arr.shape != tuple(shape):
            raise ValueError(f"{name}: produced shape {arr.shape}, declared {tuple(shape)}")
        tensors[name] = arr
    save_file(tensors, path, metadata={"format": "pt"})
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_weights(dir_: str, entries, max_shard_bytes: int) -> None:
    shards, current, size = [], [], 0
    for e in entries:
        nbytes = math.prod(e[1]) * e[2].itemsize
        if current and size + nbytes > max_shard_bytes:
            shards.append(current)
            current, size = [], 0
        current.append(e)
        size += nbytes
    shards.append(current)
    if len(shards) == 1:
        write_shard(os.path.join(dir_, WEIGHTS_NAME), shards[0])
        return
    weight_map, total = {}, 0
    for i, shard in enumerate(shards):
        fname = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
        write_shard(os.path.join(dir_, fname), shard)
        for name, shape, dt, _ in shard:
            weight_map[name] = fname
            total += math.prod(shape) * dt.itemsize
    write_json(
        os.path.join(dir_, INDEX_NAME),
        {"metadata": {"total_size": total}, "weight_map": weight_map},
        sort_keys=True,
        default=None,
    )


# ------------------------------------------------------------------------- resizing
def resize_token_embeddings(
    model: Transformer, new_vocab_size: int, *, pad_to_multiple_of: int | None = None
) -> Transformer:
    """Grows the embedding (and an untied lm_head) for added special tokens.

    New rows start at the mean of the existing rows, so a new token's logit starts
    near the average instead of at an arbitrary random direction.
    """
    cfg: ModelConfig = model.config
    if pad_to_multiple_of:
        new_vocab_size = -(-new_vocab_size // pad_to_multiple_of) * pad_to_multiple_of
    if new_vocab_size < cfg.vocab_size:
        raise ConfigError(
            f"new vocab size {new_vocab_size} < current {cfg.vocab_size}: shrinking would drop "
            "trained rows"
        )
    if new_vocab_size == cfg.vocab_size:
        return model
    extra = new_vocab_size - cfg.vocab_size
    new_cfg = cfg.replace(vocab_size=new_vocab_size)
    state = nnx.state(model)

    def grow(x: jax.Array, axis: int) -> jax.Array:
        mean = jnp.mean(x.astype(jnp.float32), axis=axis, keepdims=True).astype(x.dtype)
        y = jnp.concatenate([x, jnp.repeat(mean, extra, axis=axis)], axis=axis)
        if isinstance(x.sharding, NamedSharding):
            try:
                y = jax.device_put(y, x.sharding)
            except ValueError as e:
                raise ConfigError(
                    f"vocab size {new_vocab_size} does not fit the sharding {x.sharding.spec} "
                    f"({e}); pass pad_to_multiple_of"
                ) from None
        return y

    flat = []
    for p, var in nnx.to_flat_state(state):
        if p == ("embed_tokens", "embedding"):
            var = var.replace(grow(var.get_value(), 0))
        elif p == ("lm_head", "kernel"):
            var = var.replace(grow(var.get_value(), 1))
        flat.append((p, var))
    grown = nnx.merge(nnx.graphdef(abstract_model(new_cfg)), nnx.from_flat_state(flat))
    # A fresh graphdef drops the placement.
    grown.constrain_activations(model.activation_sharding, model.head_axes)
    return grown
