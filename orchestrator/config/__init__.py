"""Hydra composition over a dataclass schema, plus the checks that run before any actor starts."""
from orchestrator.config.errors import ConfigError
from orchestrator.config.load import CONFIG_DIR, compose_config, list_groups
from orchestrator.config.validate import validate_config

__all__ = ["ConfigError", "CONFIG_DIR", "compose_config", "list_groups", "validate_config"]
