"""The ``regkit`` command: subcommands, exit statuses and error reporting.

Exit status: 0 on success, 2 on bad input (a user error: one line on stderr, no traceback), 1 on an
internal error (with the traceback, since it is a bug to report), 130 on Ctrl-C.

Subcommands come from the ``regkit.commands`` entry-point group: each entry point is a function
``register(subparsers)`` that adds one subparser and sets ``func`` (taking the parsed arguments and
returning an exit status or None) as its default. Plugins add theirs the same way.
"""

from __future__ import annotations

import argparse
import sys
import traceback
from collections.abc import Callable, Sequence
from typing import Any

from regkit.errors import BackendUnavailableError, UserInputError
from regkit.registry import Registry

__all__ = ["build_parser", "commands", "main"]

Register = Callable[[Any], None]

commands: Registry[Register] = Registry("command", entry_point_group="regkit.commands")


class _Parser(argparse.ArgumentParser):
    """argparse, with usage errors printed as one line and exit status 2."""

    def error(self, message: str) -> Any:
        self.print_usage(sys.stderr)
        self.exit(2, f"{self.prog}: error: {message}\n")


def _builtin_commands() -> None:
    # Built-ins register here rather than through entry points, so that a source checkout that
    # is not installed still has them.
    from regkit.cli import camera_cmd, project_cmd, register2d3d_cmd, register3d_cmd, render_cmd

    builtins = (("camera", camera_cmd.register), ("project", project_cmd.register),
                ("render", render_cmd.register),
                ("register-3d3d", register3d_cmd.register),
                ("register-2d3d", register2d3d_cmd.register))
    for name, reg in builtins:
        if name not in commands._items:
            commands.add(name, reg)


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The full parser, with every built-in and plugin subcommand.

    With ``command`` naming a built-in, only that subcommand is added: running a built-in then
    loads no plugin (the reconstruction plugin's imports cost 0.3 s of every ``register-2d3d``).
    Any other ``command`` (a plugin's, or unknown) gives the full parser, whose error lists the
    known names.
    """
    from regkit import __version__

    _builtin_commands()
    parser = _Parser(prog="regkit", description="Medical image registration (2D-3D, 3D-3D) and "
                     "single-radiograph bone reconstruction.")
    parser.add_argument("--version", action="version", version=f"regkit {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True
    # commands._items holds the built-ins before any entry point is loaded (see get())
    names = [command] if command is not None and command in commands._items \
        else commands.names()
    for name in names:
        commands.get(name)(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status."""
    try:
        words = list(sys.argv[1:] if argv is None else argv)
        first = words[0] if words and not words[0].startswith("-") else None
        parser = build_parser(first)
        args = parser.parse_args(words)
        status = args.func(args)
        return 0 if status is None else int(status)
    except SystemExit as exit_:
        code = exit_.code
        return code if isinstance(code, int) else (0 if code is None else 2)
    except UserInputError as err:
        print(f"regkit: error: {err}", file=sys.stderr)
        return 2
    except BackendUnavailableError as err:
        print(f"regkit: error: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("regkit: interrupted", file=sys.stderr)
        return 130
    except Exception:
        traceback.print_exc()
        print("regkit: internal error (a bug: please report it with the traceback above)",
              file=sys.stderr)
        return 1


def run() -> None:
    """Console-script entry point."""
    sys.exit(main())


if __name__ == "__main__":
    run()
