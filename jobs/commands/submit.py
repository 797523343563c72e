"""``mien submit`` and ``mien jobs``: run a mien job on a Ray cluster, list recent jobs.

The Ray Jobs client (working_dir, forwarded environment, token auth) is ``jobs.submit``; it
imports Ray only when it connects.
"""

from __future__ import annotations

import argparse
import os
import sys

from jobs.submit import JOBS, list_jobs, submit


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("submit", help="submit a mien job to a Ray cluster (Ray Jobs API, working_dir = this repo)",
                       description="Submit `mien JOB ARGS` as a Ray job. Everything after -- goes to the job.")
    p.add_argument("job", choices=JOBS)
    p.add_argument("--address", default=None, metavar="URL",
                   help="job server, e.g. http://127.0.0.1:8265 (default: RAY_ADDRESS)")
    p.add_argument("--wait", action="store_true", help="stream the job's logs; exit code follows its status")
    p.add_argument("job_args", nargs="*", metavar="-- ARGS", help="-- then the job's own arguments")
    p.set_defaults(handler=run)

    p = sub.add_parser("jobs", help="list recent Ray jobs on a cluster")
    p.add_argument("--address", default=None, metavar="URL", help="job server (default: RAY_ADDRESS)")
    p.add_argument("--limit", type=int, default=20)
    p.set_defaults(handler=run)


def split_job_args(argv: list[str]) -> tuple[list[str], list[str]]:
    """``mien submit JOB [OPTIONS] -- ARGS``: (the arguments for argparse, ARGS for the job untouched).

    argparse (3.11) rejects options after ``--`` once the ``job`` positional matched, so the
    job's arguments are cut off before parsing."""
    if argv[:1] == ["submit"] and "--" in argv:
        cut = argv.index("--")
        return argv[:cut], argv[cut + 1:]
    return argv, []


def run(args: argparse.Namespace) -> int:
    address = args.address or os.environ.get("RAY_ADDRESS")
    if not address:
        print(f"mien {args.command}: give --address http://HEAD:8265 or set RAY_ADDRESS", file=sys.stderr)
        return 2
    try:
        if args.command == "jobs":
            return list_jobs(address, args.limit)
        return submit(args.job, address, args.job_args, wait=args.wait)
    except ConnectionError as e:
        print(f"mien {args.command}: {e}", file=sys.stderr)
        return 2
