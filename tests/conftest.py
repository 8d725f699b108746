"""Shared fixtures live in tests/fixtures/, one module per area."""

import signal

pytest_plugins = ["tests.fixtures.synth", "tests.fixtures.export", "tests.fixtures.serve", "tests.fixtures.runtime",
                  "tests.fixtures.train", "tests.fixtures.crop", "tests.fixtures.badinput"]

# A suite started in the background (`cmd &`, nohup) inherits SIGINT ignored, and so would every child
# process: the Ctrl-C tests could not interrupt anything. Handled here, children get the default again.
signal.signal(signal.SIGINT, signal.default_int_handler)
