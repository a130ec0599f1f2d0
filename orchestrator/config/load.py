"""Compose a config from `configs/` with Hydra and turn Hydra/OmegaConf failures into one-line errors."""
from __future__ import annotations

import dataclasses
import os
import re
from pathlib import Path

from hydra import compose, initialize_config_dir
from hydra.core.config_store import ConfigStore
from hydra.core.global_hydra import GlobalHydra
from hydra.errors import ConfigCompositionException, MissingConfigException
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from orchestrator.config import schema as schema_module
from orchestrator.config.errors import ConfigError
from orchestrator.config.schema import BatonConfig

CONFIG_DIR = Path(os.environ.get("BATON_CONFIG_DIR", Path(__file__).resolve().parents[2] / "configs"))
GROUPS = ("algorithm", "model", "rollout", "backend", "task", "cluster", "preset")

ConfigStore.instance().store(name="baton_schema", node=BatonConfig)


def list_groups() -> dict[str, list[str]]:
    """Each config group and its options, from the YAML files on disk."""
    return {g: sorted(p.stem for p in (CONFIG_DIR / g).glob("*.yaml")) for g in GROUPS}


def _explain(err: BaseException) -> ConfigError:
    """Reduce a Hydra/OmegaConf exception chain to the offending key and a short reason."""
    chain, e = [], err
    while e is not None:
        chain.append(e)
        e = e.__cause__ or e.__context__
    for e in chain:
        m = re.search(r"Missing mandatory value: ([\w.\[\]]+)", str(e))
        if m:
            return ConfigError(m.group(1), "required value is not set (it is ??? in the YAML)")
        full_key = getattr(e, "full_key", None)
        msg = str(getattr(e, "msg", None) or e).splitlines()[0]
        if full_key:
            if "not in" in msg and "Key" in msg:
                return ConfigError(full_key, f"unknown key ({msg})")
            return ConfigError(full_key, msg)
    text = " ".join(str(e).splitlines()[0] for e in chain)
    m = re.search(r"Could not (?:override|append to) '([^']+)'", text)
    if m:
        reason = "unknown key" if "not in" in text or "Key" in text else text
        return ConfigError(m.group(1), reason)
    m = re.search(r"Could not find '([^']+)'", text)
    if m:
        group = m.group(1).split("/")[0]
        options = list_groups().get(group)
        hint = f"; options: {', '.join(options)}" if options else ""
        return ConfigError(group, f"no config named '{m.group(1)}'{hint}")
    return ConfigError("<overrides>", text)


def _unknown_key(node: DictConfig, schema: type, prefix: str = "") -> str | None:
    """The first key of `node` that the dataclass `schema` does not declare (free-form dict fields excepted).

    Hydra's `+key=value` adds keys even to a structured config, so composition alone lets a
    typo through; this walk is what makes `+trainer.any_typo=1` an error.
    """
    fields = {f.name: f for f in dataclasses.fields(schema)}
    for key in node.keys():
        if key not in fields:
            return f"{prefix}{key}"
        sub = fields[key].type
        sub = sub if isinstance(sub, type) else getattr(schema_module, str(sub), None)
        child = node._get_node(key)  # the node itself: reading the value would resolve interpolations
        if dataclasses.is_dataclass(sub) and isinstance(child, DictConfig):
            found = _unknown_key(child, sub, f"{prefix}{key}.")
            if found:
                return found
    return None


def missing_values(node: DictConfig, prefix: str = "") -> list[str]:
    """Keys whose value is ??? (required, not set); interpolations are not followed, so none of them fails."""
    found: list[str] = []
    for key in node.keys():
        child = node._get_node(key)
        if isinstance(child, DictConfig):
            found += missing_values(child, f"{prefix}{key}.")
        elif child is not None and child._is_missing() and not child._is_interpolation():
            found.append(f"{prefix}{key}")
    return found


def compose_config(overrides: list[str], *, allow_missing: bool = False) -> DictConfig:
    """The composed, schema-checked, resolved config. `allow_missing` (for printing it) leaves required values
    that are not set as ??? and interpolations unresolved instead of failing."""
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
            cfg = compose(config_name="config", overrides=list(overrides))
    except (ConfigCompositionException, MissingConfigException, OmegaConfBaseException, ValueError) as err:
        raise _explain(err) from None
    finally:
        GlobalHydra.instance().clear()
    unknown = _unknown_key(cfg, BatonConfig)
    if unknown:
        raise ConfigError(unknown, "unknown key (not in the schema, orchestrator/config/schema.py; a `+key=value` "
                                   "override adds keys only under free-form dicts such as reward.rule_kwargs)")
    if allow_missing and missing_values(cfg):
        return cfg
    try:
        missing = sorted(OmegaConf.missing_keys(cfg))
        if missing:
            raise ConfigError(missing[0], f"required value is not set ({len(missing)} missing: {', '.join(missing[:5])})")
        OmegaConf.resolve(cfg)
    except OmegaConfBaseException as err:
        raise _explain(err) from None
    return cfg
