"""Config files: the shipped ones are found by name from any directory (so an
installed package needs no checkout), a user's own file by its path, and a name that
is neither is refused naming the shipped ones."""

from __future__ import annotations

import pytest

from kardia_jax.config_files import BUNDLED_CONFIGS, load_config, sharding_preset
from kardia_jax.errors import ConfigError


@pytest.mark.parametrize("spec", ["configs/sft_tiny.py", "sft_tiny.py", "sft_tiny"])
def test_shipped_configs_load_by_name_from_any_directory(tmp_path, monkeypatch, spec):
    monkeypatch.chdir(tmp_path)
    c = load_config(spec, ["--config.train.steps=3"])
    assert c.config_file == str(BUNDLED_CONFIGS / "sft_tiny.py")
    assert c.train.steps == 3
    # Its sharding preset comes from next to it, the shipped presets.
    assert sharding_preset("fsdp_tp", c.config_file).mesh.tensor == 2


def test_a_file_of_the_users_wins_over_a_shipped_name(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "configs").mkdir()
    (tmp_path / "configs" / "sft_tiny.py").write_text(
        "from kardia_jax.train.config import sft_config\n"
        "def get_config():\n"
        "    c = sft_config()\n"
        "    c.train.steps = 77\n"
        "    return c\n"
    )
    assert load_config("configs/sft_tiny.py").train.steps == 77
    # and a preset file beside it is found before the shipped one
    (tmp_path / "configs" / "sharding").mkdir()
    (tmp_path / "configs" / "sharding" / "dp.py").write_text(
        "from ml_collections import ConfigDict\n"
        "def get_config():\n"
        "    return ConfigDict(dict(mesh=dict(data=-1), rules=(), mine=True))\n"
    )
    assert sharding_preset("dp", str(tmp_path / "configs" / "sft_tiny.py")).mine


@pytest.mark.parametrize(
    "spec", ["nope.py", "configs/nope.py", "/abs/sft_tiny.py", "x/sft_tiny.py"]
)
def test_an_unknown_config_is_refused_naming_the_shipped_ones(tmp_path, monkeypatch, spec):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError, match=r"does not exist \(bundled configs: .*pipeline_demo"):
        load_config(spec)


def test_tpu_configs_are_named_by_the_slice_their_docstring_gives():
    """configs/tpu/<run>_<slice>.py: each loads by that path from any directory, and the
    topology its docstring's compile-check command uses is the slice of its name."""
    import re

    from kardia_jax.config_files import BUNDLED_CONFIGS, load_config
    from kardia_jax.pipeline.compile_check import parse_topology

    files = sorted((BUNDLED_CONFIGS / "tpu").glob("[!_]*.py"))
    assert files
    for path in files:
        config = load_config(f"configs/tpu/{path.name}")
        assert config.model.preset, path.name
        topology = re.search(r"--topology (\S+)", path.read_text()).group(1)
        assert path.stem.endswith("_" + parse_topology(topology).name), (path.name, topology)


@pytest.mark.parametrize("gemma, qwen", [("2b", "3b"), ("7b", "7b")])
def test_the_gemma_runs_are_the_qwen_runs_recipe_with_gemma_shapes(gemma, qwen):
    """configs/pipeline_gemma.py: the paper's Gemma-2B / 7B runs take every setting of
    the Qwen2.5 runs (data, SFT, GRPO, judge, evaluation) but the model's shape."""
    from kardia_jax.models import get_preset

    g = load_config(f"configs/pipeline_gemma.py:{gemma}")
    q = load_config(f"configs/pipeline_qwen2p5.py:{qwen}")
    for stage in ("sft", "grpo"):
        assert g[stage].model.preset == f"gemma_{gemma}"
        assert get_preset(g[stage].model.preset).family == "gemma"
    assert g.eval.eval.label == f"Gemma-{gemma.upper()} Kardia (ours)"

    def recipe(c):
        d = c.to_dict()
        for stage in ("sft", "grpo", "eval"):
            d[stage].pop("config_file")
            d[stage]["model"].pop("preset", None)
        d["eval"]["eval"].pop("label")
        d.pop("config_file")
        return d

    assert recipe(g) == recipe(q)
    with pytest.raises(ConfigError, match="pipeline_gemma.py:9b: expected 2b or 7b"):
        load_config("configs/pipeline_gemma.py:9b")


def test_the_gemma_demo_is_the_demo_with_gemma_3_270m_as_policy():
    demo = load_config("configs/pipeline_demo.py").to_dict()
    gemma = load_config("configs/pipeline_demo_gemma.py").to_dict()
    assert (gemma["policy"], gemma["judge"]) == ("gemma3-270m", "smollm2")
    changed = {
        (stage, key, field)
        for stage in ("sft", "grpo", "eval")
        for key, section in demo[stage].items()
        if isinstance(section, dict)
        for field in section
        if section[field] != gemma[stage][key][field]
    }
    assert changed == {
        ("sft", "train", "steps"),
        ("sft", "checkpoint", "every"),
        ("sft", "model", "remat"),
        ("sft", "checkpoint", "async_save"),
        ("grpo", "checkpoint", "async_save"),
        ("grpo", "train", "microbatches"),
        ("eval", "eval", "label"),
    }
