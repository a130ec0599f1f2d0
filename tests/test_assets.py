"""The char tokenizer and the tiny model load through the plain HF Auto* calls."""
from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

from orchestrator.assets.char_tokenizer import CHARACTERS, build_char_tokenizer, save_char_tokenizer
from orchestrator.assets.tiny_model import build_tiny_model, count_parameters
from orchestrator.tokenizer import load_tokenizer

DEFAULT_SIZE = dict(
    hidden_size=256, num_layers=4, num_heads=8, num_kv_heads=4, intermediate_size=768, max_position_embeddings=512
)
SMALL_SIZE = dict(
    hidden_size=32, num_layers=2, num_heads=4, num_kv_heads=2, intermediate_size=64, max_position_embeddings=64
)


@pytest.fixture(scope="module")
def tokenizer():
    return build_char_tokenizer(model_max_length=128)


@pytest.fixture(scope="module")
def default_model_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("tiny_qwen2")
    return build_tiny_model(out, arch="qwen2", seed=0, tie_word_embeddings=True, **DEFAULT_SIZE)


# ---------------------------------------------------------------- tokenizer


def test_special_ids_and_vocab_size(tokenizer):
    assert (tokenizer.pad_token_id, tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.unk_token_id) == (0, 1, 2, 3)
    assert (tokenizer.pad_token, tokenizer.bos_token, tokenizer.eos_token) == ("<pad>", "<s>", "</s>")
    assert len(tokenizer) == 4 + len(CHARACTERS)


def test_every_character_is_one_known_token(tokenizer):
    ids = tokenizer(CHARACTERS)["input_ids"]
    assert len(ids) == len(CHARACTERS)
    assert tokenizer.unk_token_id not in ids
    assert len(set(ids)) == len(CHARACTERS)
    for required in "0123456789+-*=() \nabcxyz":
        assert required in CHARACTERS


@pytest.mark.parametrize(
    "text",
    ["37+48=85", "a b  c", "  leading and trailing  ", "line one\nline two\n", "(12*3)-4=32", " ", "", CHARACTERS],
)
def test_round_trip_keeps_spaces(tokenizer, text):
    ids = tokenizer(text)["input_ids"]
    assert len(ids) == len(text)  # one token per character, no BOS/EOS added
    assert tokenizer.decode(ids) == text


def test_unknown_characters_map_to_unk(tokenizer):
    ids = tokenizer("1A2é")["input_ids"]
    assert ids[1] == ids[3] == tokenizer.unk_token_id
    assert ids[0] != tokenizer.unk_token_id
    assert tokenizer.decode(ids) == "1<unk>2<unk>"


def test_eos_in_text_is_one_special_token(tokenizer):
    ids = tokenizer("85</s>")["input_ids"]
    assert ids[-1] == tokenizer.eos_token_id and len(ids) == 3
    assert tokenizer.decode(ids, skip_special_tokens=True) == "85"
    assert tokenizer.decode(ids) == "85</s>"


def test_save_and_load_through_autotokenizer(tmp_path, tokenizer):
    save_char_tokenizer(tmp_path, model_max_length=128)
    loaded = load_tokenizer(tmp_path)
    text = "12 + 30 = 42\nok?"
    assert loaded(text)["input_ids"] == tokenizer(text)["input_ids"]
    assert loaded.decode(loaded(text)["input_ids"]) == text
    assert (loaded.pad_token_id, loaded.bos_token_id, loaded.eos_token_id) == (0, 1, 2)
    assert loaded.model_max_length == 128
    batch = loaded(["1+1=", "12+3="], padding=True)
    assert batch["input_ids"][0][-1] == 0 and batch["attention_mask"][0] == [1, 1, 1, 1, 0]


# ---------------------------------------------------------------- tiny model


def test_default_model_loads_like_a_hub_model(default_model_dir):
    files = {p.name for p in default_model_dir.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"} <= files
    assert not any(name.endswith(".bin") for name in files)
    model, info = AutoModelForCausalLM.from_pretrained(default_model_dir, output_loading_info=True)
    assert type(model).__name__ == "Qwen2ForCausalLM"
    assert not info["missing_keys"] and not info["unexpected_keys"]
    assert model.dtype == torch.float32
    assert 2_500_000 <= count_parameters(model) <= 4_000_000
    assert model.lm_head.weight is model.model.embed_tokens.weight


def test_model_and_tokenizer_ids_agree(default_model_dir):
    model = AutoModelForCausalLM.from_pretrained(default_model_dir)
    tok = load_tokenizer(default_model_dir)
    assert model.config.vocab_size == len(tok)
    assert model.config.pad_token_id == tok.pad_token_id == 0
    assert model.config.bos_token_id == tok.bos_token_id
    assert model.config.eos_token_id == tok.eos_token_id
    assert model.generation_config.eos_token_id == tok.eos_token_id
    assert tok.model_max_length == model.config.max_position_embeddings == 512
    enc = tok(["37+48=", "5*6="], padding=True, return_tensors="pt")
    logits = model(**enc).logits
    assert logits.shape == (2, 6, len(tok))
    assert torch.isfinite(logits).all()


def test_llama_untied(tmp_path):
    build_tiny_model(tmp_path, arch="llama", seed=0, tie_word_embeddings=False, **SMALL_SIZE)
    model = AutoModelForCausalLM.from_pretrained(tmp_path)
    assert type(model).__name__ == "LlamaForCausalLM"
    assert model.config.num_key_value_heads == 2 and model.config.num_hidden_layers == 2
    assert model.lm_head.weight.data_ptr() != model.model.embed_tokens.weight.data_ptr()


def test_seeded_init_is_deterministic_and_leaves_global_rng(tmp_path):
    rng_before = torch.get_rng_state()
    a = build_tiny_model(tmp_path / "a", arch="qwen2", seed=7, tie_word_embeddings=True, **SMALL_SIZE)
    b = build_tiny_model(tmp_path / "b", arch="qwen2", seed=7, tie_word_embeddings=True, **SMALL_SIZE)
    c = build_tiny_model(tmp_path / "c", arch="qwen2", seed=8, tie_word_embeddings=True, **SMALL_SIZE)
    assert torch.equal(torch.get_rng_state(), rng_before)
    sa, sb, sc = (load_file(d / "model.safetensors") for d in (a, b, c))
    assert sa.keys() == sb.keys()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not all(torch.equal(sa[k], sc[k]) for k in sa)


@pytest.mark.parametrize(
    "override, message",
    [({"arch": "gpt2"}, "unknown arch"), ({"num_heads": 5}, "divisible"), ({"num_kv_heads": 3}, "divisible")],
)
def test_bad_shapes_fail_before_init(tmp_path, override, message):
    kwargs = dict(arch="qwen2", seed=0, tie_word_embeddings=True, **SMALL_SIZE)
    kwargs.update(override)
    with pytest.raises(ValueError, match=message):
        build_tiny_model(tmp_path, **kwargs)
