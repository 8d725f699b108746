"""Shared fixtures live in tests/fixtures/, one module per area."""

pytest_plugins = ["tests.fixtures.synth", "tests.fixtures.export", "tests.fixtures.serve", "tests.fixtures.runtime",
                  "tests.fixtures.train", "tests.fixtures.crop", "tests.fixtures.badinput"]
