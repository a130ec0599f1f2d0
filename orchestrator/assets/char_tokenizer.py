"""A character-level tokenizer shipped in the repo, so CPU runs need no model hub.

It is a real `tokenizers` model wrapped in `PreTrainedTokenizerFast`, saved with
`save_pretrained`, and loaded back from its `tokenizer.json` exactly as saved
(`orchestrator.tokenizer.load_tokenizer`, or `PreTrainedTokenizerFast.from_pretrained(dir)`).
Not `AutoTokenizer` alone: for a Qwen2-architecture directory transformers 5 builds Qwen2's
byte-level BPE instead, which deletes spaces from this vocabulary.

Design choices (each one keeps the char model behaving like a normal HF tokenizer):
- WordLevel over single characters; the pre-tokenizer isolates every character
  (spaces and newlines included), and the `Fuse` decoder joins tokens without
  separators, so `decode(encode(s)) == s` for any string over the vocabulary.
- Characters outside the vocabulary map to `<unk>` (id 3).
- No post-processor: like Qwen2.5, encoding adds no BOS/EOS; the trainer appends
  EOS to SFT targets and the rollout stops on it.
"""
from __future__ import annotations

import string
from pathlib import Path

from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

PAD_TOKEN = "<pad>"
BOS_TOKEN = "<s>"
EOS_TOKEN = "</s>"
UNK_TOKEN = "<unk>"
# Part of the warm-start recipe: bump it when the saved tokenizer files change, so a cached or
# shipped warm start written with the old files is replaced rather than silently reused.
TOKENIZER_FORMAT = "char-wordlevel/2"
# Order fixes the ids: pad must be 0 (padding code and configs rely on it).
SPECIAL_TOKENS: tuple[str, ...] = (PAD_TOKEN, BOS_TOKEN, EOS_TOKEN, UNK_TOKEN)

# The character inventory. Append only: reordering changes ids of saved models.
CHARACTERS: str = (
    string.digits
    + "+-*/=()"
    + " \n"
    + string.ascii_lowercase
    + ".,:;?!'\"#$%"
)


def char_vocab() -> dict[str, int]:
    """Token -> id for the special tokens followed by the single characters."""
    tokens = list(SPECIAL_TOKENS) + list(CHARACTERS)
    if len(set(tokens)) != len(tokens):
        raise AssertionError("duplicate entry in the character vocabulary")
    return {tok: i for i, tok in enumerate(tokens)}


def _build_backend() -> Tokenizer:
    """The raw `tokenizers` object: per-character split, WordLevel lookup, fuse decode."""
    tok = Tokenizer(models.WordLevel(vocab=char_vocab(), unk_token=UNK_TOKEN))
    # `[\s\S]` matches any single character including newline; "isolated" keeps each.
    tok.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    tok.decoder = decoders.Fuse()
    # Registered as special so "</s>" in text is one token and skip_special_tokens drops it.
    tok.add_special_tokens(list(SPECIAL_TOKENS))
    return tok


def build_char_tokenizer(*, model_max_length: int) -> PreTrainedTokenizerFast:
    """The character tokenizer as a HF fast tokenizer (pad id 0, bos 1, eos 2, unk 3)."""
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=_build_backend(),
        pad_token=PAD_TOKEN,
        bos_token=BOS_TOKEN,
        eos_token=EOS_TOKEN,
        unk_token=UNK_TOKEN,
        model_max_length=model_max_length,
        clean_up_tokenization_spaces=False,
    )
    if tokenizer.pad_token_id != 0:
        raise AssertionError(f"pad id must be 0, got {tokenizer.pad_token_id}")
    return tokenizer


def save_char_tokenizer(out_dir: str | Path, *, model_max_length: int) -> Path:
    """Write the tokenizer files to `out_dir` (loadable with `orchestrator.tokenizer.load_tokenizer`)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    build_char_tokenizer(model_max_length=model_max_length).save_pretrained(out)
    return out
