"""usedge augment commands."""

from usedge.cli.app import app  # noqa: F401
