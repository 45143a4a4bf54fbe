"""`gacd` command line: it parses and dispatches; each command lives in `gacd.commands`."""

from __future__ import annotations

import argparse
import contextlib
import os
import sys

from gacd.commands import COMMANDS
from gacd.errors import GacdError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="gacd",
        description="Transfer adversarial robustness from a robust teacher to a student "
        "(GACD and baselines), and measure it honestly.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for command in COMMANDS:
        command.register(sub)
    return parser


def parse_args(argv: list[str]) -> argparse.Namespace:
    """Parse with dotted overrides allowed anywhere among a sub-command's flags
    (`gacd run CFG --dry-run out=x`); a sub-command's error shows its own usage."""
    parser = build_parser()
    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices
    if argv and argv[0] in commands:
        args = commands[argv[0]].parse_intermixed_args(argv[1:])
        args.command = argv[0]
        return args
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Run one command. Errors a user can fix (GacdError) print one line and exit non-zero;
    anything else is a bug and keeps its traceback."""
    args = parse_args(sys.argv[1:] if argv is None else list(argv))
    try:
        return args.func(args)
    except GacdError as err:
        print(f"gacd {args.command}: error: {err}", file=sys.stderr)
        return err.exit_code
    except BrokenPipeError:  # the reader went away (`gacd zoo | head`): nothing to report
        # Point stdout at devnull so the interpreter's final flush cannot fail again (an
        # stdout without a file descriptor has nothing left to flush there).
        with contextlib.suppress(OSError, ValueError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141  # what a shell reports for a command ended by SIGPIPE
    except KeyboardInterrupt:
        print(
            f"gacd {args.command}: interrupted; finished epochs are saved: re-run the same "
            "command to resume",
            file=sys.stderr,
        )
        return 130


if __name__ == "__main__":
    sys.exit(main())
