"""Decode attention on TPU, by the TPU compiler's own figures: our XLA form
(`layers.cached_attention` against the [B, K, S, H] cache) against the Pallas paged
attention kernel (`jax.experimental.pallas.ops.tpu.paged_attention`) on the same
cache, one decode step of one layer, compiled for a compile-only TPU slice (libtpu,
no TPU needed).

    python bench/tpu_decode_attention.py                      # Qwen2.5-3B / 7B rollouts on v5e:2x2
    python bench/tpu_decode_attention.py --topology v5p:2x2x1 --rows 256

The cache is split over the slice's chips by rows (the data-parallel layout of
GRPO rollouts). The paged kernel gets the cache as contiguous pages, [K, B * S / page,
page, H] (the layout adopting it would need; the transposition is not counted), and
attends keys [0, length): it has no start offset, so left padding would need a
different cache layout on top. Prints one JSON object: per chip, for each form, the
compiler's memory analysis, its cost analysis (FLOPs and bytes accessed; a Mosaic
kernel is opaque to it: its own cost estimate, if any, is what is counted) and the
custom calls in the compiled program.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections import Counter

from kardia_jax.host import quiet_cpu_host  # noqa: E402

quiet_cpu_host()  # as the CLI: no libtpu probe warnings, no lockfile

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from jax.experimental import topologies  # noqa: E402
from jax.experimental.pallas.ops.tpu.paged_attention import paged_attention  # noqa: E402
from jax.sharding import NamedSharding  # noqa: E402
from jax.sharding import PartitionSpec as P  # noqa: E402

from kardia_jax.models import get_preset  # noqa: E402
from kardia_jax.models.layers import attention_mask, cached_attention  # noqa: E402


def _figures(compiled) -> dict:
    mem = compiled.memory_analysis()
    cost = compiled.cost_analysis() or {}
    if isinstance(cost, list | tuple):
        cost = cost[0] if cost else {}
    calls = Counter(re.findall(r'custom_call_target="([^"]+)"', compiled.as_text()))
    return {
        "argument_bytes": int(mem.argument_size_in_bytes),
        "output_bytes": int(mem.output_size_in_bytes),
        "temp_bytes": int(mem.temp_size_in_bytes),
        "flops": float(cost.get("flops", float("nan"))),
        "bytes_accessed": float(cost.get("bytes accessed", float("nan"))),
        "custom_calls": dict(calls),
    }


def measure(preset: str, topology: str, rows: int, slots: int, page: int) -> dict:
    cfg = get_preset(preset)
    devices = topologies.get_topology_desc(topology, "tpu").devices
    mesh = jax.sharding.Mesh(np.array(devices), ("data",))
    n_chips = len(devices)
    b, k, n, h = rows, cfg.num_kv_heads, cfg.num_heads, cfg.head_dim
    bf16 = jnp.bfloat16

    def struct(shape, dtype, spec):
        return jax.ShapeDtypeStruct(shape, dtype, sharding=NamedSharding(mesh, spec))

    q = struct((b, 1, n, h), bf16, P("data"))
    cache = struct((b, k, slots, h), bf16, P("data"))
    kv_mask = struct((b, slots), jnp.int32, P("data"))
    index = struct((), jnp.int32, P())

    def xla(q, k_cache, v_cache, kv_mask, index):
        mask = attention_mask(kv_mask, 1, q_offset=index)
        return cached_attention(q, k_cache, v_cache, mask, bf16, transposed=False)

    xla_fig = _figures(jax.jit(xla).lower(q, cache, cache, kv_mask, index).compile())

    per_seq = slots // page
    pages = struct((k, b * per_seq, page, h), bf16, P(None, "data"))
    lengths = struct((b,), jnp.int32, P("data"))
    table = struct((b, per_seq), jnp.int32, P("data"))
    block = max(d for d in range(1, min(per_seq, 8) + 1) if per_seq % d == 0)

    def paged(q, k_pages, v_pages, lengths, page_indices):
        def local(q, kp, vp, ln, pi):
            # Page indices are global in the table: this chip's pages start at its rows.
            pi = pi - pi[:1, :1]
            return paged_attention(q[:, 0], kp, vp, ln, pi, pages_per_compute_block=block)

        return jax.shard_map(
            local,
            mesh=mesh,
            in_specs=(P("data"), P(None, "data"), P(None, "data"), P("data"), P("data")),
            out_specs=P("data"),
            check_vma=False,
        )(q, k_pages, v_pages, lengths, page_indices)

    paged_fig = _figures(jax.jit(paged).lower(q, pages, pages, lengths, table).compile())
    return {
        "preset": preset,
        "topology": topology,
        "chips": n_chips,
        "rows": rows,
        "rows_per_chip": rows // n_chips,
        "slots": slots,
        "kv_heads": k,
        "heads": n,
        "head_dim": h,
        "page_size": page,
        "pages_per_compute_block": block,
        "xla": xla_fig,
        "pallas_paged": paged_fig,
    }


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--presets", nargs="+", default=["qwen2p5_3b", "qwen2p5_7b"])
    ap.add_argument("--topology", default="v5e:2x2")
    ap.add_argument("--rows", type=int, default=64, help="rollout rows over the slice")
    ap.add_argument("--slots", type=int, default=2560, help="cache slots (prompt + new)")
    ap.add_argument("--page", type=int, default=128)
    args = ap.parse_args(argv)
    out = [measure(p, args.topology, args.rows, args.slots, args.page) for p in args.presets]
    print(json.dumps({"jax": jax.__version__, "results": out}, indent=2))
    for r in out:
        x, p = r["xla"], r["pallas_paged"]
        print(
            f"{r['preset']} on {r['topology']}, {r['rows_per_chip']} rows x {r['slots']} slots "
            f"per chip: temps XLA {x['temp_bytes'] / 2**20:.2f} MiB vs paged "
            f"{p['temp_bytes'] / 2**20:.2f} MiB; bytes accessed XLA "
            f"{x['bytes_accessed'] / 2**20:.1f} MiB vs paged {p['bytes_accessed'] / 2**20:.1f} MiB",
            file=sys.stderr,
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
