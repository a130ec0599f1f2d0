"""One error type for every bad-config case, so the CLI can print one line and exit 2."""


class ConfigError(ValueError):
    def __init__(self, key: str, message: str):
        self.key = key
        super().__init__(f"config error at {key}: {message}")
