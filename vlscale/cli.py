"""The one command-line entry point: ``vlscale <command>``.

Each feature package contributes its sub-commands through a ``cli`` module with a
``register(registry)`` function. Those modules import only argparse-level code at
import time so that ``vlscale --help`` stays fast; heavy imports (jax, torch)
happen inside the command handlers.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from dataclasses import dataclass, field
from typing import Callable

from vlscale import __version__
from vlscale.errors import UserError

# Feature packages that add commands. A package that is missing (not written yet)
# is skipped, so the CLI works while the project grows.
COMMAND_MODULES = (
    "vlscale.scaling.cli",
    "vlscale.models.cli",
    "vlscale.data.cli",
    "vlscale.train.cli",
    "vlscale.eval.cli",
)

# Commands that collect sub-commands from several packages (e.g. `vlscale data synth`).
GROUPS = {
    "data": "Datasets: the synthetic captioned-shapes shards, the paper's published results table.",
}


@dataclass
class CommandRegistry:
    parser: argparse.ArgumentParser
    _top: argparse._SubParsersAction = field(init=False)
    _groups: dict = field(default_factory=dict)

    def __post_init__(self):
        self._top = self.parser.add_subparsers(dest="command", metavar="<command>")

    def _group(self, name: str) -> argparse._SubParsersAction:
        if name not in self._groups:
            p = self._top.add_parser(name, help=GROUPS.get(name, ""), description=GROUPS.get(name))
            self._groups[name] = p.add_subparsers(dest="subcommand", metavar="<subcommand>")
            p.set_defaults(_handler=lambda args, p=p: p.print_help() or 2)
        return self._groups[name]

    def add(
        self,
        name: str,
        help: str,
        configure: Callable[[argparse.ArgumentParser], None],
        handler: Callable[[argparse.Namespace], int | None],
        group: str | None = None,
        description: str | None = None,
    ) -> argparse.ArgumentParser:
        sub = self._group(group) if group else self._top
        p = sub.add_parser(
            name,
            help=help,
            description=description or help,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        configure(p)
        p.set_defaults(_handler=handler)
        return p


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="vlscale",
        description=(
            "Scaling-law studies of CLIP and MaMMUT in JAX/Flax: models with open_clip parity, "
            "data pipelines, and a robust scaling-law fitter and comparison engine."
        ),
        epilog="Run `vlscale <command> --help` for the options of a command.",
    )
    parser.add_argument("--version", action="version", version=f"vlscale {__version__}")
    registry = CommandRegistry(parser)
    for mod_name in COMMAND_MODULES:
        try:
            mod = importlib.import_module(mod_name)
        except ModuleNotFoundError as e:
            if e.name == mod_name:
                continue
            raise
        mod.register(registry)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    handler = getattr(args, "_handler", None)
    if handler is None:
        parser.print_help()
        return 2
    try:
        rc = handler(args)
    except UserError as e:
        print(f"vlscale {args.command}: error: {e}", file=sys.stderr)
        return 2
    except FileNotFoundError as e:
        print(f"vlscale {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # Output piped into `head` and the like: stop quietly, as Unix tools do.
        sys.stderr.close()
        return 0
    return int(rc or 0)


if __name__ == "__main__":
    sys.exit(main())
