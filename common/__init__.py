"""Shared by every process: protocol schema and codec, status codes, clocks, config, logging."""

from importlib import metadata


def version() -> str:
    """The installed distribution's version ("0" when run from a checkout never installed)."""
    try:
        return metadata.version("clockwork-serving")
    except metadata.PackageNotFoundError:
        return "0"
