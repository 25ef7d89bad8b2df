"""The package version (one place: ``pyproject.toml`` and fingerprints read it from here)."""

__version__ = "0.1.0"
