"""usedge serve commands."""

from usedge.cli.app import app  # noqa: F401
