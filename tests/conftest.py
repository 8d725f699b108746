"""Shared fixtures live in tests/fixtures/, one module per area."""

pytest_plugins = []
