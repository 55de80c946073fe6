"""The sampler's KV cache for sliding-window layers, by the TPU compiler's own figures:
the decode program with every layer caching all prompt + budget slots (sliding layers
masked to their window) against sliding layers in rings of window slots
(`decoder.cache_for_decode`, what the sampler keeps), compiled for a compile-only TPU
slice (libtpu, no TPU needed) through `Sampler.programs`, the builder the runs use.

    python bench/sliding_window_cache.py                  # gemma3_1b, gemma3_4b on v5e:2x2
    python bench/sliding_window_cache.py --presets gemma2_2b --prompt 4096 --new 4096

Rows are split over the slice's chips (data parallel, weights replicated), so each
chip decodes `rows / chips` rows. Weights and cache in bf16, layers scanned. Prints
one JSON object: per preset and layout, the cache bytes per chip (from the shapes)
and the decode program's memory analysis per chip.
"""

from __future__ import annotations

import argparse
import json
import sys

from kardia_jax.host import quiet_cpu_host

quiet_cpu_host()  # as the CLI: no libtpu probe warnings, no lockfile

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
from flax import nnx  # noqa: E402

from kardia_jax.models import get_preset  # noqa: E402
from kardia_jax.models.decoder import cache_shapes, ring_slots  # noqa: E402
from kardia_jax.pipeline.compile_check import (  # noqa: E402
    Target,
    compile_program,
    device_bytes,
    for_target,
    placed_model,
    topology_devices,
)
from kardia_jax.sampling import Sampler, SamplingConfig  # noqa: E402
from kardia_jax.sharding import DEFAULT_RULES, make_mesh  # noqa: E402

GIB = 2**30


def _figures(compiled, cache) -> dict:
    mem = compiled.memory_analysis()
    return {
        "cache_bytes": device_bytes(cache),
        "argument_bytes": int(mem.argument_size_in_bytes),
        "output_bytes": int(mem.output_size_in_bytes),
        "alias_bytes": int(mem.alias_size_in_bytes),
        "temp_bytes": int(mem.temp_size_in_bytes),
        "compiler_peak_bytes": int(getattr(mem, "peak_memory_in_bytes", 0) or 0),
    }


def measure(preset: str, topology: str, rows: int, prompt: int, new: int) -> dict:
    devices = topology_devices(topology)
    mesh = make_mesh({"data": len(devices)}, devices=devices)
    target = Target(mesh, DEFAULT_RULES, list(devices))
    cfg = get_preset(preset).replace(dtype="bfloat16", param_dtype="bfloat16", scan_layers=True)
    cfg = for_target(cfg, target)  # TPU kernels: keys cached [B, K, S, H]
    graphdef, params = placed_model(cfg, target)

    sampler = Sampler(nnx.merge(graphdef, params), eos_ids=[], mesh=mesh)
    b, p, n = sampler.shapes([[0] * prompt] * rows, new)
    prefill, decode = sampler.programs(b, p, n, SamplingConfig())
    i32 = jnp.int32

    def struct(shape, dtype, sharding=None):
        return jax.ShapeDtypeStruct(shape, dtype, sharding=sharding)

    key = jax.eval_shape(lambda: jax.random.key(0))
    stop = struct((8,), i32)
    args = (struct((b, p), i32), struct((b, p), i32), struct((b,), jnp.bool_))
    pre = compile_program(prefill.lower(graphdef, params, *args, stop, stop, key, new), "prefill")
    ring_state = jax.tree.map(
        lambda o, s: struct(o.shape, o.dtype, s), pre.out_info, pre.output_shardings
    )
    # The same state with every layer caching all slots: one [L, ...] stack each.
    k_sharding = jax.tree.leaves(pre.output_shardings.cache.k)[0]
    v_sharding = jax.tree.leaves(pre.output_shardings.cache.v)[0]
    k_shape, v_shape = cache_shapes(cfg, b, p + n)
    dtype = jax.tree.leaves(ring_state.cache.k)[0].dtype
    full_cache = ring_state.cache.replace(
        k=struct(k_shape, dtype, k_sharding), v=struct(v_shape, dtype, v_sharding)
    )
    full_state = ring_state.replace(cache=full_cache)
    out = {
        "preset": preset,
        "topology": topology,
        "chips": len(devices),
        "rows": b,
        "rows_per_chip": b // len(devices),
        "slots": p + n,
        "window": cfg.sliding_window,
        "ring_slots": ring_slots(cfg, p + n),
        "layers": cfg.num_layers,
        "sliding_layers": sum(cfg.local_layers),
        "kv_heads": cfg.num_kv_heads,
        "head_dim": cfg.head_dim,
    }
    for name, state in (("full", full_state), ("ring", ring_state)):
        compiled = compile_program(decode.lower(graphdef, params, state, n), f"decode ({name})")
        out[name] = _figures(compiled, (state.cache.k, state.cache.v))
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--presets", nargs="+", default=["gemma3_1b", "gemma3_4b"])
    ap.add_argument("--topology", default="v5e:2x2")
    ap.add_argument("--rows", type=int, default=64, help="rows over the slice (16 per chip)")
    ap.add_argument("--prompt", type=int, default=1024)
    ap.add_argument("--new", type=int, default=1024)
    args = ap.parse_args(argv)
    results = [measure(p, args.topology, args.rows, args.prompt, args.new) for p in args.presets]
    print(json.dumps({"jax": jax.__version__, "results": results}, indent=2))
    for r in results:
        f, g = r["full"], r["ring"]
        print(
            f"{r['preset']}: {r['rows_per_chip']} rows x {r['slots']} slots per chip, cache "
            f"{f['cache_bytes'] / GIB:.2f} -> {g['cache_bytes'] / GIB:.2f} GiB; decode args "
            f"{f['argument_bytes'] / GIB:.2f} -> {g['argument_bytes'] / GIB:.2f} GiB, temps "
            f"{f['temp_bytes'] / GIB:.3f} -> {g['temp_bytes'] / GIB:.3f} GiB, compiler peak "
            f"{f['compiler_peak_bytes'] / GIB:.2f} -> {g['compiler_peak_bytes'] / GIB:.2f} GiB",
            file=sys.stderr,
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
