"""The one command-line entry point: ``vlscale <command>``.

Each feature package contributes its sub-commands through a ``cli`` module with a
``register(registry)`` function. Those modules import only argparse-level code at
import time so that ``vlscale --help`` stays fast; heavy imports (jax, torch)
happen inside the command handlers.
"""

from __future__ import annotations

import argparse
import errno
import importlib
import os
import sys
from dataclasses import dataclass, field
from typing import Callable

from vlscale import __version__
from vlscale.commands import exits_at_once  # noqa: F401 (where commands mark themselves)
from vlscale.errors import UserError

# Feature packages that add commands. A package that is missing (not written yet)
# is skipped, so the CLI works while the project grows.
COMMAND_MODULES = (
    "vlscale.commands.scaling",
    "vlscale.commands.models",
    "vlscale.commands.data",
    "vlscale.commands.train",
    "vlscale.commands.eval",
    "vlscale.commands.study",
)

DEBUG_ENV = "VLSCALE_DEBUG"

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
        p.set_defaults(_handler=handler, _prog=p.prog)
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
    parser.add_argument("--debug", action="store_true",
                        help=f"print the full traceback of an unexpected error (also ${DEBUG_ENV}=1)")
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


# OS conditions of the user's files and machine: shown as one-line errors, not as crashes.
USER_OS_ERRORS = (FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError, FileExistsError)
USER_ERRNOS = (errno.ENOSPC, errno.EROFS, errno.EDQUOT, errno.ENAMETOOLONG)
EXIT_USER_ERROR = 2  # bad input (argparse uses 2 for bad flags too)
EXIT_INTERNAL_ERROR = 1  # a bug: one line plus the path of a log with the traceback


_RAN = {"exits_at_once": False}  # set by _main for the handler it ran


def _os_error_text(e: OSError) -> str:
    if e.filename is not None and e.strerror:
        return f"{e.filename}: {e.strerror}"
    return str(e)


def main(argv: list[str] | None = None) -> int:
    """Runs ``vlscale ARGV`` and returns its exit status.

    Errors are one stderr line ``vlscale CMD: error: MESSAGE`` (argparse's format, so bad flags look the same),
    exit 2. Ctrl-C / SIGTERM: ``vlscale CMD: interrupted by SIGINT``, exit 130 / 143. Anything unexpected: one
    line with the path of a log holding the full traceback, exit 1 (``--debug`` prints the traceback instead).
    Called as a program (``argv`` None), an interrupted run, and any run of a command marked ``exits_at_once``,
    leaves through ``signals.hard_exit`` (see there).
    """
    from vlscale.runtime import signals

    as_program = argv is None
    with signals.stop_on_signals(force_after=signals.CLI_FORCE_AFTER_S):
        try:
            rc = _main(argv)
        except signals.StopRequested as e:  # before the handler ran (parsing, imports)
            print(f"vlscale: interrupted by {signals.signal_name(e.signum)}", file=sys.stderr)
            rc = e.exit_code
        except KeyboardInterrupt:
            print("vlscale: interrupted", file=sys.stderr)
            rc = signals.EXIT_SIGINT
    if as_program and (rc in (signals.EXIT_SIGINT, signals.EXIT_SIGTERM) or _RAN["exits_at_once"]):
        import logging

        logging.shutdown()
        signals.hard_exit(rc)
    return rc


def _main(argv: list[str] | None) -> int:
    from vlscale.runtime import disk_errors, signals

    parser = build_parser()
    # ml_collections-style ``--config.FIELD=VALUE`` overrides (train, study) are collected before argparse sees them.
    argv = sys.argv[1:] if argv is None else list(argv)
    overrides: list[tuple[str, str]] = []
    try:
        if any(a.startswith("--config.") for a in argv):
            from vlscale.configs.loading import split_overrides

            try:
                argv, overrides = split_overrides(argv)
            except UserError as e:
                parser.error(str(e))
        args = parser.parse_args(argv)
        if overrides and not getattr(args, "_config_overrides", False):
            given = " ".join(f"--config.{k}={v}" for k, v in overrides)
            parser.error(f"unrecognized arguments: {given} (only train and study take --config.FIELD)")
    except SystemExit as e:  # bad flags (2) or --help/--version (0): return the code, as for every other outcome
        return e.code if isinstance(e.code, int) else (0 if e.code is None else 2)
    args.config_overrides = overrides
    handler = getattr(args, "_handler", None)
    if handler is None:
        parser.print_help()
        return 2
    prog = getattr(args, "_prog", None) or f"vlscale {args.command}"
    _RAN["exits_at_once"] = bool(getattr(handler, "exits_at_once", False))
    try:
        rc = handler(args)
    except UserError as e:
        return _fail(prog, str(e))
    except signals.StopRequested as e:
        print(f"{prog}: interrupted by {signals.signal_name(e.signum)}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return signals.EXIT_SIGINT
    except BrokenPipeError:
        # Output piped into `head` and the like: stop quietly, as Unix tools do.
        sys.stderr.close()
        return 0
    except USER_OS_ERRORS as e:
        return _fail(prog, _os_error_text(e))
    except OSError as e:
        if e.errno in (errno.ENOSPC, errno.EDQUOT):
            return _fail(prog, disk_errors.disk_error_message(e, _output_of(args)) or _os_error_text(e))
        if e.errno in USER_ERRNOS:
            return _fail(prog, _os_error_text(e))
        return _crash(prog, e, argv, args)
    except MemoryError as e:
        return _fail(prog, "out of memory" + (f" ({e})" if str(e) else "") + "; try a smaller input or setting")
    except Exception as e:  # noqa: BLE001 - the one place that turns bugs into a report
        # A full disk inside a library's own error type (safetensors, TensorStore).
        disk = disk_errors.disk_error_message(e, _output_of(args))
        if disk is not None:
            return _fail(prog, disk)
        return _crash(prog, e, argv, args)
    return int(rc or 0)


def _output_of(args) -> str | None:
    """The path a command writes to (named in a full-disk message when the error itself names none)."""
    for name in ("out", "workdir", "dir", "results"):
        value = getattr(args, name, None)
        if isinstance(value, (str, os.PathLike)):
            return os.fspath(value)
    return None


def _fail(prog: str, message: str) -> int:
    # One line: a message with newlines would hide its start above the prompt.
    print(f"{prog}: error: {' '.join(message.split())}", file=sys.stderr)
    return EXIT_USER_ERROR


def _stderr_is_terminal() -> bool:
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):  # replaced or closed stderr
        return False


def _crash(prog: str, exc: Exception, argv, args) -> int:
    """A bug: one line naming the crash log. Where nobody watches a terminal (stderr redirected to a job log) or
    several processes run (a pod, where the log file lands on each worker's own disk), the full traceback also goes
    to stderr, each line prefixed with ``[process I/N]`` so interleaved logs of the workers stay apart."""
    import traceback

    from vlscale.crashlog import one_line, write_crash_log
    from vlscale.runtime.distributed import process_info

    if getattr(args, "debug", False) or os.environ.get(DEBUG_ENV, "") not in ("", "0"):
        traceback.print_exc()
        print(f"{prog}: internal error: {one_line(exc)}", file=sys.stderr)
        return EXIT_INTERNAL_ERROR
    log = write_crash_log(exc, argv)
    index, count = process_info()
    prefix = f"[process {index}/{count}] "
    if count > 1 or not _stderr_is_terminal():
        text = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
        print("\n".join(prefix + line for line in text.rstrip("\n").splitlines()), file=sys.stderr)
    where = f"full traceback in {log}" if log else "no log folder was writable; rerun with --debug"
    print(f"{prog}: internal error{' ' + prefix.strip() if count > 1 else ''}: {one_line(exc)} (a bug in vlscale, "
          f"please report it; {where}; `vlscale --debug ...` prints it)", file=sys.stderr, flush=True)
    return EXIT_INTERNAL_ERROR


if __name__ == "__main__":
    sys.exit(main())
