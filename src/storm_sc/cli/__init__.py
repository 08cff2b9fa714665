"""The ``storm-sc`` command line: ``storm-sc demo``, ``storm-sc pretrain --config FILE.yaml``."""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

# Each subcommand lives in its own module exposing `add_parser(subparsers)` and `run(args) -> int`;
# adding a command is one entry here. Modules are imported only when needed to keep `--help` fast.
_COMMANDS = {
    "demo": "storm_sc.cli._demo",
    "pretrain": "storm_sc.cli._pretrain",
}


def _build_parser() -> argparse.ArgumentParser:
    from storm_sc import __version__

    parser = argparse.ArgumentParser(
        prog="storm-sc",
        description="STORM: joint H&E, expression and spatial-context representations for spatial omics.",
    )
    parser.add_argument("--version", action="version", version=f"storm-sc {__version__}")
    parser.add_argument("-q", "--quiet", action="store_true", help="only print warnings and errors")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module in _COMMANDS.values():
        try:
            importlib.import_module(module).add_parser(subparsers)
        except ModuleNotFoundError as err:  # a command whose module is not part of this build
            if err.name != module:
                raise
    for command in subparsers.choices.values():
        # `storm-sc demo -q` as well as `storm-sc -q demo`; SUPPRESS keeps a -q given before the command
        command.add_argument(
            "-q", "--quiet", action="store_true", default=argparse.SUPPRESS, help="only print warnings and errors"
        )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``storm-sc`` command line.

    Parameters
    ----------
    argv
        Arguments without the program name; ``sys.argv[1:]`` when ``None``.

    Returns
    -------
    The process exit status.

    Examples
    --------
    >>> from storm_sc.cli import main
    >>> main(["--help"])  # doctest: +SKIP
    """
    parser = _build_parser()
    args = parser.parse_args(argv)
    if args.command is None:  # a script calling storm-sc without a command must see that it did nothing
        parser.print_help(sys.stderr)
        return 2
    if args.quiet:
        from storm_sc import settings

        settings.verbosity = "WARNING"
    return int(importlib.import_module(_COMMANDS[args.command]).run(args) or 0)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
