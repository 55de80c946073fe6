"""FSDP over `fsdp` times Megatron tensor parallelism over `tensor` (heads, MLP
hidden and vocab split). Keep `tensor` within a host's fast interconnect; it must
divide the number of kv heads."""

from ml_collections import ConfigDict


def get_config():
    return ConfigDict(
        dict(
            mesh=dict(data=1, fsdp=-1, tensor=2),
            rules=(
                ("batch", ("data", "fsdp")),
                ("length", None),
                ("vocab", "tensor"),
                ("embed", "fsdp"),
                ("heads", "tensor"),
                ("kv_heads", "tensor"),
                ("head_dim", None),
                ("mlp", "tensor"),
                ("layers", None),
            ),
        )
    )
