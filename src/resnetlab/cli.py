"""The `resnetlab` command line: thin parsing over the library.

Each subcommand lives in ``resnetlab/commands/<name>.py`` and exposes ``add_parser(subparsers)``
(which must call ``parser.set_defaults(run=<function taking args>)``). Commands are listed here so
the order of ``--help`` reads the way a person learns the tool.
"""

from __future__ import annotations

import argparse
import errno
import importlib
import logging
import os
import sys

from resnetlab import __version__
from resnetlab.errors import ResnetlabError, strip_unsafe_advice

COMMANDS = [
    "data",
    "models",
    "train",
    "evaluate",
    "calibrate",
    "compare",
    "finetune",
    "lr_find",  # the subcommand lr-find
    "predict",
    "explain",
    "export",
    "serve",
    "experiment",
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="resnetlab",
        description="Train, fine-tune and evaluate residual networks on CIFAR-10/100 and your own image folders.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Run 'resnetlab COMMAND --help' for the options of one command.",
    )
    parser.add_argument("--version", action="version", version=f"resnetlab {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="print debug logging")
    subparsers = parser.add_subparsers(title="commands", metavar="COMMAND")
    for name in COMMANDS:
        importlib.import_module(f"resnetlab.commands.{name}").add_parser(subparsers)
    return parser


# A full disk, a quota, a read-only or not-permitted location: the user's to fix, so one line, not a
# traceback. resnetlab.utils.atomic puts the destination path on errors raised while writing.
STORAGE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.EFBIG})


def storage_message(exc: OSError) -> str:
    """``PATH: No space left on device; free some space ...`` from an OSError of the storage kind."""
    reason = exc.strerror or os.strerror(exc.errno)
    where = f"{exc.filename}: " if exc.filename else ""
    hint = {errno.ENOSPC: "free some space", errno.EDQUOT: "free some space", errno.EFBIG: "free some space",
            errno.EROFS: "choose a writable location"}.get(exc.errno, "check its permissions or choose another location")
    # resnetlab writes every file to a temporary name and renames it only when complete.
    return f"{where}{reason}; {hint} and run again (files written before are intact)"


def one_line(message: str) -> str:
    """The promised one-line error, whatever a message carries (and never torch's unsafe-load advice)."""
    return " ".join(strip_unsafe_advice(message).split())


def main(argv: list[str] | None = None, *, hooks=None) -> int:
    """The ``resnetlab`` command line. ``hooks``: ``engine.TrainHooks`` for train and finetune,
    given by tests (tests/train_with_hooks.py) through this same path; the command line has none."""
    parser = build_parser()
    args = parser.parse_args(argv)
    args.hooks = hooks
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(message)s",
    )
    if not hasattr(args, "run"):
        parser.print_help()
        return 2
    try:
        result = args.run(args)
    except ResnetlabError as exc:
        print(f"resnetlab: error: {one_line(str(exc))}", file=sys.stderr)
        return 1
    except OSError as exc:
        if exc.errno not in STORAGE_ERRNOS:
            raise  # not the user's disk or permissions: a bug, keep the traceback
        print(f"resnetlab: error: {storage_message(exc)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("resnetlab: interrupted", file=sys.stderr)
        return 130
    return int(result or 0)


if __name__ == "__main__":
    raise SystemExit(main())
