"""The `labhelper` command: doctor, census, cleanup.

    labhelper doctor [--json]                 what this machine offers the course (exit 1 if a
                                              required piece is missing)
    labhelper census [--json]                 what of ours exists in the kernel now
    labhelper cleanup [--dry-run] [--owner NAME]
                                              remove it (exit 0 also when there is nothing)

Exit status: 0 done, 1 something failed (or is missing), 2 refused or a clear error,
3 an internal error (a bug: please report it). Warnings and errors go to stderr.
"""
from __future__ import annotations

import argparse
import json
import os
import sys

from . import cleanup as _cleanup
from .errors import LabError
from .teach import lab

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
        objects = [{"kind": o.kind, "name": o.name, "detail": o.detail, "owner": o.owner, "where": list(o.where)}
                   for o in c.objects]
        print(json.dumps({"objects": objects, "problems": c.problems}, indent=2))
    else:
        print(c.table())
    _warn(c.problems)
    return 0


def _warn(problems: list[str]) -> None:
    # Problems (an unreadable ledger file, a ledger only root may read) go to stderr, once each:
    # stdout stays the answer to the command, and a script can tell the two apart.
    for line in problems:
        print(f"warning: {line}", file=sys.stderr)


def _cleanup_cmd(args) -> int:
    result = _cleanup.cleanup(owner=args.owner, dry_run=args.dry_run)
    print(result.text(notes=False) if result.actions or args.dry_run or args.verbose else "nothing to clean up")
    _warn(result.problems)
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
    for stream in (sys.stdout, sys.stderr):
        # A path may hold bytes that are not UTF-8 (kept as lone surrogates by os.fsdecode):
        # print them as \xNN escapes instead of failing with UnicodeEncodeError.
        try:
            stream.reconfigure(errors="backslashreplace")
        except (AttributeError, ValueError):
            pass
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
    except Exception as exc:  # noqa: BLE001 - a bug in labhelper: say so, briefly
        import traceback
        where = traceback.extract_tb(exc.__traceback__)[-1]
        print(f"labhelper {args.command}: internal error: {type(exc).__name__}: {exc}\n"
              f"  (at {os.path.basename(where.filename)}:{where.lineno} in {where.name})\n"
              "  this is a bug in labhelper: please report it, with this message and the command you ran "
              "(LABHELPER_DEBUG=1 shows the full traceback)", file=sys.stderr)
        if os.environ.get("LABHELPER_DEBUG") == "1":
            traceback.print_exc()
        return 3


if __name__ == "__main__":
    sys.exit(main())
