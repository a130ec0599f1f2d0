"""Load a checkpoint's tokenizer exactly as it was saved, and find text it cannot represent.

Why not plain `AutoTokenizer.from_pretrained`: transformers 5 picks the tokenizer class from
the model type, and for some types (qwen2 among them) it rebuilds the pipeline in code,
ignoring the saved `tokenizer.json`. A Qwen2-architecture model with Baton's character
tokenizer then loads a byte-level BPE over a char vocabulary, which silently deletes spaces
and every character it has no byte token for. So the loader compares what AutoTokenizer
built with the saved file and, where they differ, loads the file verbatim.

`lost_characters` is the other half of "never drop text": a tokenizer may map what it
cannot represent to `<unk>`, or drop it; either way the data loader rejects such rows,
naming file and row, before any worker starts.
"""
from __future__ import annotations

import json
import logging
from collections import Counter
from pathlib import Path

from transformers import PreTrainedTokenizerBase

log = logging.getLogger("baton.tokenizer")

TOKENIZER_FILE = "tokenizer.json"
# The parts of a tokenizers pipeline that decide which ids a text becomes.
_PIPELINE_PARTS = ("normalizer", "pre_tokenizer", "model", "decoder")


class TokenizerError(ValueError):
    """A tokenizer directory that cannot be loaded as written; names the path."""


def _pipeline(spec: dict) -> dict:
    parts = {k: spec.get(k) for k in _PIPELINE_PARTS}
    model = dict(parts["model"] or {})
    model.pop("dropout", None)  # training-time option, no effect on encoding
    parts["model"] = model
    return parts


def load_tokenizer(path: str | Path) -> PreTrainedTokenizerBase:
    """The tokenizer saved in `path`, behaving exactly as the saved `tokenizer.json` does."""
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    path = Path(path)
    try:
        tok = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
    except (OSError, ValueError, json.JSONDecodeError) as err:
        raise TokenizerError(f"cannot load the tokenizer in '{path}': {str(err).splitlines()[0]}") from None
    saved = path / TOKENIZER_FILE
    backend = getattr(tok, "backend_tokenizer", None)
    if not saved.is_file() or backend is None:
        return tok
    try:
        on_disk = _pipeline(json.loads(saved.read_text(encoding="utf-8")))
    except json.JSONDecodeError as err:
        raise TokenizerError(f"'{saved}' is not valid JSON ({err})") from None
    if _pipeline(json.loads(backend.to_str())) == on_disk:
        return tok
    log.info("%s: AutoTokenizer built %s, which differs from the saved %s; loading the saved file as written",
             path, type(tok).__name__, TOKENIZER_FILE)
    return PreTrainedTokenizerFast.from_pretrained(str(path), local_files_only=True)


def lost_characters(tok: PreTrainedTokenizerBase, texts: list[str]) -> list[list[str]]:
    """Per text, the characters that do not survive encode -> decode (dropped, or turned into `<unk>`).

    Compared as multisets after the tokenizer's own normaliser, so a tokenizer that adds a
    prefix space or composes accents (NFC) is not accused; one that loses a space is.
    """
    if not texts:
        return []
    backend = getattr(tok, "backend_tokenizer", None)
    normalizer = backend.normalizer if backend is not None else None
    unk = tok.unk_token_id
    out = []
    for text, ids in zip(texts, tok(list(texts), add_special_tokens=False)["input_ids"]):
        kept = [i for i in ids if i != unk] if unk is not None else ids
        decoded = tok.decode(kept, skip_special_tokens=False, clean_up_tokenization_spaces=False)
        expected = normalizer.normalize_str(text) if normalizer is not None else text
        out.append(sorted((Counter(expected) - Counter(decoded)).elements()))
    return out
