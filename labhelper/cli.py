"""The `labhelper` command: doctor, census, cleanup.

    labhelper doctor [--json]                 what this machine offers the course (exit 1 if a
                                              required piece is missing)
    labhelper census [--json]                 what of ours exists in the kernel now
    labhelper cleanup [--dry-run] [--owner NAME]
                                              remove it (exit 0 also when there is nothing)
"""
from __future__ import annotations

import argparse
import json
import sys

from . import cleanup as _cleanup
from . import lab
from .errors import LabError

__all__ = ["main"]


def _doctor(args) -> int:
    report = lab.doctor()
    if args.json:
        print(json.dumps(report.as_dict(), indent=2, sort_keys=True))
    else:
        print(report.text())
        if not report.ok:
            print("\nSomething required is missing: see the fixes above.")
    return 0 if report.ok else 1


def _census(args) -> int:
    c = _cleanup.census()
    if args.json:
        print(json.dumps({"objects": [o.__dict__ for o in c.objects], "problems": c.problems}, indent=2))
    else:
        print(c.table())
    for line in c.problems:
        print(f"warning: {line}", file=sys.stderr)
    return 0


def _cleanup_cmd(args) -> int:
    result = _cleanup.cleanup(owner=args.owner, dry_run=args.dry_run)
    print(repr(result) if result.actions or args.dry_run or args.verbose else "nothing to clean up")
    for line in result.problems:
        print(f"warning: {line}", file=sys.stderr)
    if result.failures:
        for line in result.failures:
            print(f"error: {line}", file=sys.stderr)
        return 1
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="labhelper", description="Docker vs virtualization, from the kernel up: "
                                     "check this machine, and list or remove the kernel objects the course made.")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("doctor", help="what this machine offers the course")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=_doctor)
    p = sub.add_parser("census", help="what of ours exists in the kernel now")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_census)
    p = sub.add_parser("cleanup", help="remove every kernel object of ours")
    p.add_argument("--dry-run", action="store_true", help="say what would be removed; remove nothing")
    p.add_argument("--owner", metavar="NAME", help="only objects of this owner (e.g. ch05)")
    p.add_argument("-v", "--verbose", action="store_true")
    p.set_defaults(func=_cleanup_cmd)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except LabError as exc:
        print(f"labhelper {args.command}: {exc}", file=sys.stderr)
        return 2
    except PermissionError as exc:
        print(f"labhelper {args.command}: {exc}\n  hint: run it as root (sudo labhelper {args.command})",
              file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # `labhelper census | head`: the reader left; that is fine
        sys.stderr.close()
        return 0


if __name__ == "__main__":
    sys.exit(main())
