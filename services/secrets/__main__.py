"""Make the stack's secrets: `python -m services.secrets make DIR` or `… install` (compose).

make DIR      every secret file in DIR, keeping those that exist (deploy/make-secrets)
install       the compose one-shot: chosen values from --source, kept ones in --store, each
              consumer's files into --target/<consumer> (one volume each)
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from services.secrets.store import install, make


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m services.secrets", description=__doc__)
    parser.add_argument("--db-host", default="postgres", help="database host in the URLs")
    parser.add_argument("--db-port", type=int, default=5432, help="database port in the URLs")
    commands = parser.add_subparsers(dest="command", required=True)
    make_cmd = commands.add_parser("make", help="write every secret file into a directory")
    make_cmd.add_argument("directory", type=Path)
    install_cmd = commands.add_parser("install", help="hand each consumer its own files")
    install_cmd.add_argument("--source", type=Path, help="chosen values (may be missing)")
    install_cmd.add_argument("--store", type=Path, required=True, help="values kept from before")
    install_cmd.add_argument("--target", type=Path, required=True, help="one directory a consumer")
    args = parser.parse_args(argv)
    try:
        if args.command == "make":
            values = make(args.directory, args.db_host, args.db_port)
            print(f"secrets in {args.directory}: {' '.join(sorted(values))}")
        else:
            install(args.source, args.store, args.target, args.db_host, args.db_port)
            print(
                f"secrets installed for: {' '.join(sorted(p.name for p in args.target.iterdir()))}"
            )
    except (OSError, ValueError) as exc:  # never a value in the message: names only
        print(f"stockstreamer secrets: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
