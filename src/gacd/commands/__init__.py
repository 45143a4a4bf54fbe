"""The `gacd` commands, one module each. A module's `register(sub)` adds its sub-command
(flags and handler) to the parser; `gacd.cli` only parses and dispatches."""

from gacd.commands import analyze, demo, evaluate, experiment, robustbench, train, transfer

# In the order `gacd --help` lists them.
COMMANDS = (train, evaluate, robustbench, analyze, transfer, demo, experiment)

__all__ = ["COMMANDS"]
