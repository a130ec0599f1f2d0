"""A model directory's tokenizer loads exactly as saved, and text it cannot represent is caught, never dropped.

transformers 5 builds a Qwen2-type directory's tokenizer as Qwen2's byte-level BPE whatever
`tokenizer.json` says; over Baton's character vocabulary that BPE deletes spaces and every
character it has no byte token for. These tests pin the loader that prevents it.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from transformers import AutoTokenizer

from e2e_helpers import tiny_model
from orchestrator import warm_start
from orchestrator.assets.char_tokenizer import TOKENIZER_FORMAT
from orchestrator.config import compose_config
from orchestrator.tokenizer import load_tokenizer, lost_characters

TEXT = "what is 7 + 8?\n"


@pytest.fixture(scope="module")
def qwen2_dir(tmp_path_factory) -> Path:
    return tiny_model(tmp_path_factory.mktemp("tok") / "model")


def _pipeline(path: Path) -> dict:
    spec = json.loads((path / "tokenizer.json").read_text())
    return {k: spec[k] for k in ("normalizer", "pre_tokenizer", "model", "decoder")}


def test_qwen2_directory_keeps_spaces_and_marks_unknown_characters(qwen2_dir):
    tok = load_tokenizer(qwen2_dir)
    ids = tok(TEXT, add_special_tokens=False)["input_ids"]
    assert tok.decode(ids) == TEXT and len(ids) == len(TEXT)
    assert tok("ABC", add_special_tokens=False)["input_ids"] == [tok.unk_token_id] * 3


def test_the_shipped_warm_start_tokenizer_keeps_spaces(tmp_path):
    tok = load_tokenizer(warm_start.SHIPPED_ROOT / "arithmetic-tiny-qwen2")
    assert tok.decode(tok(TEXT, add_special_tokens=False)["input_ids"]) == TEXT
    assert lost_characters(tok, [TEXT, "37+48=", "ABC"]) == [[], [], ["A", "B", "C"]]


def test_the_shipped_recipe_names_the_tokenizer_format(tmp_path):
    cfg = compose_config([f"trainer.cache_dir={tmp_path}"])
    assert warm_start.recipe(cfg)["tokenizer"] == TOKENIZER_FORMAT
    assert warm_start.matches(warm_start.shipped_path(cfg), cfg)  # the shipped copy is used, not re-trained


def test_saved_tokenizer_reloads_to_the_same_pipeline(qwen2_dir, tmp_path):
    load_tokenizer(qwen2_dir).save_pretrained(tmp_path)
    assert _pipeline(tmp_path) == _pipeline(qwen2_dir)
    again = load_tokenizer(tmp_path)
    assert again.decode(again(TEXT, add_special_tokens=False)["input_ids"]) == TEXT


def test_lost_characters_sees_deleted_and_unknown_characters(qwen2_dir):
    lossy = AutoTokenizer.from_pretrained(qwen2_dir)  # what transformers 5 builds for a qwen2 directory
    assert lost_characters(lossy, [TEXT, "12+3="]) == [["\n", " ", " ", " ", " "], []]
    exact = load_tokenizer(qwen2_dir)
    assert lost_characters(exact, [TEXT, "1é2", "</s>x"]) == [[], ["é"], []]
