"""Command-line entry point `baton` (placeholder until the CLI lands)."""


def main() -> None:
    raise SystemExit("baton: CLI not implemented yet")
