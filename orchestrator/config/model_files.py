"""Is a model directory whole? Checked on the driver before Ray starts, naming the key and the file.

A corrupt `config.json` or a truncated safetensors file otherwise fails inside every worker,
after start-up, as a bare JSON or safetensors traceback. Reading the headers costs a few
kilobytes per file, however large the model.
"""
from __future__ import annotations

import json
import struct
from pathlib import Path

from orchestrator.config.errors import ConfigError

INDEX_FILE = "model.safetensors.index.json"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json")


def read_json(key: str, path: Path) -> dict:
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise ConfigError(key, f"'{path}' is not valid JSON ({err})") from None
    except (OSError, UnicodeDecodeError) as err:
        raise ConfigError(key, f"cannot read '{path}' ({err})") from None
    if not isinstance(value, dict):
        raise ConfigError(key, f"'{path}' holds a JSON {type(value).__name__}, expected an object")
    return value


def hf_config(key: str, path: str | Path) -> dict:
    """config.json of a model directory (the text config of a multimodal one)."""
    conf = read_json(key, Path(path) / "config.json")
    return conf.get("text_config", conf)


def check_safetensors_file(key: str, file: Path) -> None:
    """The header parses and the file is as long as the header says (a truncated copy is not)."""
    try:
        with file.open("rb") as f:
            raw = f.read(8)
            if len(raw) < 8:
                raise ConfigError(key, f"'{file}' is truncated: {len(raw)} bytes, shorter than a safetensors header")
            (header_len,) = struct.unpack("<Q", raw)
            size = file.stat().st_size
            if 8 + header_len > size:
                raise ConfigError(key, f"'{file}' is truncated: its header alone needs {8 + header_len} bytes, "
                                       f"the file has {size}")
            header = json.loads(f.read(header_len))
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise ConfigError(key, f"'{file}' is not a safetensors file (its header is not JSON)") from None
    except OSError as err:
        raise ConfigError(key, f"cannot read '{file}' ({err})") from None
    ends = [int(t["data_offsets"][1]) for name, t in header.items() if name != "__metadata__"]
    need = 8 + header_len + max(ends, default=0)
    if size < need:
        raise ConfigError(key, f"'{file}' is truncated: its header promises {need} bytes, the file has {size} "
                               "(an interrupted copy or download?)")


def check_model_dir(key: str, path: str | None, hint: str, *, need_tokenizer: bool) -> None:
    """config.json parses, every weight file (or index shard) is whole, the tokenizer files are there."""
    if not path:
        raise ConfigError(key, f"no model path is set; {hint}")
    root = Path(path)
    if not (root / "config.json").is_file():
        raise ConfigError(key, f"'{path}' is not a HF checkpoint directory (no config.json); {hint}")
    hf_config(key, root)
    index = root / INDEX_FILE
    if index.is_file():
        shards = sorted(set(read_json(key, index).get("weight_map", {}).values()))
        files = [root / s for s in shards]
        absent = [f.name for f in files if not f.is_file()]
        if absent:
            raise ConfigError(key, f"'{index}' names shards that are not there: {', '.join(absent[:3])}")
    else:
        files = sorted(root.glob("*.safetensors"))
    if not files:
        raise ConfigError(key, f"'{path}' has no *.safetensors weights (only safetensors checkpoints are read)")
    for file in files:
        check_safetensors_file(key, file)
    if need_tokenizer and not any((root / name).is_file() for name in TOKENIZER_FILES):
        raise ConfigError(key, f"'{path}' has no tokenizer ({' or '.join(TOKENIZER_FILES)}); save the tokenizer "
                               "with the model (Baton's checkpoints carry theirs)")
