"""Fully sharded data parallelism (ZeRO-3): parameters, gradients and optimizer
state split along `embed` over every device; weights are all-gathered per layer.
The default for 3B-72B training on TPU pods."""

from ml_collections import ConfigDict


def get_config():
    return ConfigDict(
        dict(
            mesh=dict(data=1, fsdp=-1, tensor=1),
            rules=(
                ("batch", ("data", "fsdp")),
                ("length", None),
                ("vocab", None),
                ("embed", "fsdp"),
                ("heads", None),
                ("kv_heads", None),
                ("head_dim", None),
                ("mlp", None),
                ("layers", None),
            ),
        )
    )
