"""Pure data parallelism: every device holds a full replica of parameters and
optimizer state; the batch is split over all devices. For models that fit one chip."""

from ml_collections import ConfigDict


def get_config():
    return ConfigDict(
        dict(
            mesh=dict(data=-1, fsdp=1, tensor=1),
            rules=(
                ("batch", ("data", "fsdp")),
                ("length", None),
                ("vocab", None),
                ("embed", None),
                ("heads", None),
                ("kv_heads", None),
                ("head_dim", None),
                ("mlp", None),
                ("layers", None),
            ),
        )
    )
