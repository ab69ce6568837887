"""The ``brainsurgeon`` command: thin subcommands over the library.

Each subcommand lives in its own module under ``brainsurgeon.cli`` and exposes
``register(subparsers)``, which adds a parser whose ``func(args) -> int`` does the work.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import os
import sys
from collections.abc import Iterator

from .. import __version__
from ..errors import BrainsurgeonError

# Order = order in --help. A module that is absent (not yet built) is skipped.
COMMAND_MODULES = [
    "demo",
    "train",
    "evaluate",
    "inspect",
    "data_cmd",
    "hf_import",
    "prune",
    "saliency_check",
    "quantize",
    "distill",
    "factorize",
    "structured",
    "compare",
    "study",
    "sensitivity",
    "report",
    "export",
    "recipe",
]

EPILOG = """\
typical session:
  brainsurgeon train --model lenet300 --data mnist --epochs 20 --out runs/lenet
  brainsurgeon prune runs/lenet --criterion obd-sd --amount 0.9 --schedule iterative \\
      --rounds 5 --finetune-epochs 2 --out runs/lenet-pruned
  brainsurgeon inspect runs/lenet-pruned
  brainsurgeon export runs/lenet-pruned --out lenet.bsc     # one compressed file
  brainsurgeon report runs/lenet-pruned

Every command accepts --json (one JSON document on stdout). Errors exit with code 2.
Set BRAINSURGEON_DEBUG=1 to see tracebacks."""


class Parser(argparse.ArgumentParser):
    """An argument parser whose mistakes are one line (``PROG: error: ... (see PROG --help)``)
    and exit code 2, like every other refusal; subcommand parsers inherit the class."""

    def error(self, message: str):
        message = " ".join(message.split())
        self.exit(2, f"{self.prog}: error: {message} (see `{self.prog} --help`)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="brainsurgeon",
        description="Make trained PyTorch networks smaller and faster without losing accuracy.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"brainsurgeon {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(f"brainsurgeon.cli.{name}")
        except ModuleNotFoundError as err:
            if err.name == f"brainsurgeon.cli.{name}":
                continue
            raise
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 0
    try:
        with processes(args):
            return int(args.func(args) or 0)
    except BrainsurgeonError as err:
        if os.environ.get("BRAINSURGEON_DEBUG"):
            raise
        message = " ".join(str(err).split())  # one line, whatever the message holds
        print(f"brainsurgeon {args.command}: error: {_where()}{message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(
            f"brainsurgeon {args.command}: interrupted; finished steps are kept "
            "(re-run with --resume where the command supports it)",
            file=sys.stderr,
        )
        return 130


@contextlib.contextmanager
def processes(args: argparse.Namespace) -> Iterator[None]:
    """Under ``torchrun`` (``WORLD_SIZE > 1``): join the process group (gloo on CPU, nccl on
    CUDA, ``cuda:LOCAL_RANK`` a rank), and silence every rank but 0. Alone: nothing."""
    from .. import distributed as parallel

    if parallel.group.env_world_size() <= 1:
        yield
        return
    from ..utils import resolve_device

    device = resolve_device(getattr(args, "device", "cpu") or "cpu")  # cuda without GPU: error
    parallel.init_from_env(device=str(device))
    if hasattr(args, "device"):
        args.device = str(parallel.group.rank_device(device))
    try:
        if parallel.is_main():
            yield
        else:
            with open(os.devnull, "w") as null:
                with contextlib.redirect_stdout(null), contextlib.redirect_stderr(null):
                    yield
    finally:
        parallel.shutdown()


def _where() -> str:
    """``"rank R of W: "`` under torch.distributed (every rank reports its own error)."""
    from .. import distributed as parallel

    return f"rank {parallel.rank()} of {parallel.world_size()}: " if parallel.active() else ""


if __name__ == "__main__":
    sys.exit(main())
