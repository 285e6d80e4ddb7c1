"""The `labhelper` command: doctor, census, cleanup, images, run.

    labhelper doctor [--json]                 what this machine offers the course (exit 1 if a
                                              required piece is missing)
    labhelper census [--json]                 what of ours exists in the kernel now
    labhelper cleanup [--dry-run] [--owner NAME]
                                              remove it (exit 0 also when there is nothing)
    labhelper images [--store DIR] ls | tree | diff NAME | history NAME | export NAME DIR |
                     import DIR REF [--name NAME] | rm NAME... | gc
                                              chapter 06's image store (docker images, image
                                              ls --tree, diff, history, save/load, rmi, prune)
    labhelper run [--store DIR] [--name N] [--rm] [-d] [-i] [--hostname H] [--memory 64m] [--cpus 0.5]
                  [--pids-limit 64] [--net none|bridge --network BRIDGE] [-p [127.0.0.1:]HOSTPORT:PORT]...
                  [-v SRC:DST[:ro]]... [-e K=V]... [-w DIR] [--user UID[:GID]] [--timeout S] IMAGE [CMD...]
                                              chapter 07's container, in the foreground, removed
                                              when it ends; exits with its exit code (125: the
                                              runtime failed or refused, 126, 127: as Docker)
    labhelper run -d ... | ps [-a] | logs [-f] NAME | exec NAME CMD... | stop [-t S] NAME... |
              rm [-f] NAME... | inspect NAME
                                              detached containers, each under its own supervisor
    labhelper build [--store DIR] -f DOCKERFILE -t NAME [CONTEXT]
                                              an image from FROM, RUN, COPY, ENV, WORKDIR, CMD

Exit status: 0 done, 1 something failed (or is missing), 2 refused or a clear error,
3 an internal error (a bug: please report it). Warnings and errors go to stderr.
"""
from __future__ import annotations

import argparse
import json
import os
import sys

from . import cleanup as _cleanup
from .errors import LabError, Refused
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


# --- labhelper images -------------------------------------------------------------------------------

def _store(args, make: bool = False):
    from . import images
    if not make and not os.path.isdir(args.store):
        return None            # nothing to list: looking must not make a store
    return images.Store(args.store, owner="cli")


def _bar(done: int, total: int, what: str) -> None:
    """A progress bar on stderr (stdout stays the command's answer)."""
    width = 24
    filled = width * done // max(total, 1)
    end = "\n" if done >= total else ""
    if sys.stderr.isatty():
        print(f"\r[{'#' * filled}{'.' * (width - filled)}] {done}/{total} {what}\033[K", end=end, file=sys.stderr,
              flush=True)
    else:
        print(f"[{done}/{total}] {what}", file=sys.stderr)


def _images_cmd(args) -> int:
    from . import images
    store = _store(args, make=args.action in ("export", "import"))
    if store is None:
        if args.action in ("ls", "tree", "gc"):
            print("(no image store yet)" if args.action != "gc" else "nothing to collect")
            return 0
        raise Refused(f"there is no image store at {args.store}", hint="build or import an image first (chapter 06)")
    if args.action == "ls":
        rows = [(img.name, str(len(img.layers)), images.human(sum(l.blob.size for l in img.layers)),
                 img.manifest.digest[7:19]) for img in images.images(store)]
        head = ("NAME", "LAYERS", "SIZE", "MANIFEST")
        widths = [max(len(r[i]) for r in rows + [head]) for i in range(4)]
        for row in [head] + rows:
            print("  ".join(f"{c:{w}}" for c, w in zip(row, widths)).rstrip())
    elif args.action == "tree":
        print(repr(images.tree(store)))
    elif args.action == "diff":
        for change in images.diff(store, args.name):
            print(repr(change))
    elif args.action == "history":
        for line in images.history(store, args.name):
            print(repr(line))
    elif args.action == "export":
        img = images.export(store, args.name, os.path.abspath(args.dest), progress=_bar)
        print(f"{img.name} written to {os.path.abspath(args.dest)} (an OCI image layout)")
    elif args.action == "import":
        img = images.import_layout(store, os.path.abspath(args.src), args.ref, args.as_name, progress=_bar)
        print(f"imported {img.name}: {len(img.layers)} layers, manifest {img.manifest.digest}")
    elif args.action == "rm":
        for name in args.names:
            removed = images.rmi(store, name)
            print(f"Untagged: {name}; deleted {len(removed.blobs)} blobs and {len(removed.layers)} layer folders")
    elif args.action == "gc":
        removed = images.gc(store)
        print(f"deleted {len(removed.blobs)} blobs, {len(removed.layers)} layer folders, {len(removed.temps)} "
              "work folders")
    return 0


# --- labhelper run ----------------------------------------------------------------------------------

def _base_image(store, command: str) -> None:
    """Docker pulls a missing image; the course makes its base, busybox, from busybox-static."""
    from . import images, rootfs
    if not any(i.name == "busybox" for i in images.images(store)):
        print(f"labhelper {command}: no image 'busybox' here yet: making it from busybox-static", file=sys.stderr)
        rootfs.base_image(store, progress=_bar)


def _run_cmd(args) -> int:
    from . import container, images
    try:
        store = images.Store(args.store, owner="cli")
        if args.image == "busybox":
            _base_image(store, "run")
        net = "bridge" if args.network else args.net
        options = dict(name=args.name, hostname=args.hostname, env=args.env, workdir=args.workdir, user=args.user,
                       memory=args.memory, cpus=args.cpus, pids=args.pids_limit, volumes=args.volume, net=net,
                       network=args.network, publish=args.publish)
        if args.detach:
            if args.interactive:
                raise Refused("-d and -i together: a detached container has no stdin to be given")
            print(container.detach(args.image, args.cmd or None, store=store, timeout=args.timeout, **options))
            return 0
        result = container.run(args.image, args.cmd or None, store=store, capture=False, timeout=args.timeout,
                               interactive=args.interactive, **options)
    except LabError as exc:
        print(f"labhelper run: {exc}", file=sys.stderr)
        return container.EXIT_RUNTIME
    if result.error:
        print(f"labhelper run: {result.error}", file=sys.stderr)
    if result.oom_killed:
        print("labhelper run: the container was killed for lack of memory (OOM: its --memory limit)", file=sys.stderr)
    if result.timed_out:
        print(f"labhelper run: the container ran past --timeout {args.timeout:g} s and was killed", file=sys.stderr)
    return result.exit_code


def _build_cmd(args) -> int:
    from . import images
    store = images.Store(args.store, owner="cli")
    _base_image(store, "build")
    img = images.build_file(store, args.file, args.tag, args.context)
    print(f"{img.name}: {len(img.layers)} layers, manifest {img.manifest.digest}")
    return 0


def _ps_cmd(args) -> int:
    from . import container
    rows = container.ps(all_=args.all)
    print(f"{'NAME':16} {'IMAGE':12} {'COMMAND':30} STATUS")
    for row in rows:
        print(repr(row))
    return 0


def _logs_cmd(args) -> int:
    from . import container
    print(container.logs(args.name, follow=args.follow, timeout=args.timeout), end="")
    return 0


def _stop_cmd(args) -> int:
    from . import container
    for name in args.names:
        container.stop(name, timeout=args.time)
        print(name)
    return 0


def _rm_cmd(args) -> int:
    from . import container
    for name in args.names:
        container.rm(name, force=args.force)
        print(name)
    return 0


def _inspect_cmd(args) -> int:
    from . import container
    print(json.dumps(container.inspect(args.name), indent=2, sort_keys=True))
    return 0


def _exec_cmd(args) -> int:
    from . import container
    try:
        result = container.exec_(args.name, args.cmd, capture=False, user=args.user, workdir=args.workdir,
                                 env=args.env)
    except LabError as exc:
        print(f"labhelper exec: {exc}", file=sys.stderr)
        return container.EXIT_RUNTIME
    if result.error:
        print(f"labhelper exec: {result.error}", file=sys.stderr)
    return result.exit_code


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
    p = sub.add_parser("images", help="chapter 06's image store: ls, tree, diff, history, export, import, rm, gc")
    p.add_argument("--store", default="/var/lib/labhelper/images", metavar="DIR",
                   help="the store (default: /var/lib/labhelper/images)")
    acts = p.add_subparsers(dest="action", required=True)
    acts.add_parser("ls", help="the images, like `docker images`")
    acts.add_parser("tree", help="the layers as a tree, like the old `docker images --tree`")
    a = acts.add_parser("diff", help="what an image's top layer changed (A/C/D), like `docker diff`")
    a.add_argument("name")
    a = acts.add_parser("history", help="the steps that made an image, newest first")
    a.add_argument("name")
    a = acts.add_parser("export", help="write an image as an OCI image layout (umoci and skopeo read it)")
    a.add_argument("name")
    a.add_argument("dest", help="a new folder below /var/lib/labhelper or /run/labhelper")
    a = acts.add_parser("import", help="read an image from an OCI image layout (verified; all or nothing)")
    a.add_argument("src", help="the layout's folder, below /var/lib/labhelper or /run/labhelper")
    a.add_argument("ref", help="the image's name in the layout's index.json")
    a.add_argument("--name", dest="as_name", help="its name here (default: REF)")
    a = acts.add_parser("rm", help="remove images; layers another image uses stay")
    a.add_argument("names", nargs="+")
    acts.add_parser("gc", help="remove blobs and layer folders no image uses")
    p.set_defaults(func=_images_cmd)
    p = sub.add_parser("run", help="run a command in a new container, like `docker run --rm` (chapter 07)")
    p.add_argument("--store", default="/var/lib/labhelper/images", help="the image store (a lab folder)")
    p.add_argument("--name", help="the container's name (default: c-XXXXXXXX)")
    p.add_argument("--rm", action="store_true", help="remove it when it ends (always, without -d)")
    p.add_argument("-d", "--detach", action="store_true", help="run it in the background under a supervisor; "
                   "print its name (then: ps, logs, exec, stop, rm)")
    p.add_argument("-i", "--interactive", action="store_true", help="keep stdin open and give it to the container")
    p.add_argument("--hostname", help="its host name (default: its name)")
    p.add_argument("--memory", "-m", help="a memory limit, such as 64m")
    p.add_argument("--cpus", type=float, help="a CPU limit in CPUs, such as 0.5")
    p.add_argument("--pids-limit", type=int, help="at most this many processes")
    p.add_argument("--net", default="none", help="its network: none (its own loopback only), or bridge")
    p.add_argument("--network", help="the lab bridge to attach it to (implies --net bridge)")
    p.add_argument("-p", "--publish", action="append", default=[], metavar="[127.0.0.1:]HOSTPORT:PORT",
                   help="reach its PORT at 127.0.0.1:HOSTPORT here (a proxy carries each connection)")
    p.add_argument("-v", "--volume", action="append", default=[], help="SRC:DST[:ro], SRC a lab folder")
    p.add_argument("-e", "--env", action="append", default=[], help="K=V, set in its environment")
    p.add_argument("-w", "--workdir", help="its working directory (made if missing)")
    p.add_argument("--user", "-u", help="UID or UID:GID to run as")
    p.add_argument("--timeout", type=float, default=3600.0, help="kill it after this many seconds (exit 137)")
    p.add_argument("image")
    p.add_argument("cmd", nargs=argparse.REMAINDER, help="the command and its arguments (default: the image's)")
    p.set_defaults(func=_run_cmd)
    p = sub.add_parser("build", help="build an image from a Dockerfile (FROM, RUN, COPY, ENV, WORKDIR, CMD)")
    p.add_argument("--store", default="/var/lib/labhelper/images", help="the image store (a lab folder)")
    p.add_argument("-f", "--file", required=True, help="the Dockerfile")
    p.add_argument("-t", "--tag", required=True, help="the new image's name")
    p.add_argument("context", nargs="?", help="the folder COPY reads from (default: the Dockerfile's)")
    p.set_defaults(func=_build_cmd)
    p = sub.add_parser("ps", help="the detached containers, like `docker ps`")
    p.add_argument("-a", "--all", action="store_true", help="the ended ones too")
    p.set_defaults(func=_ps_cmd)
    p = sub.add_parser("logs", help="what a detached container printed")
    p.add_argument("-f", "--follow", action="store_true", help="wait until it ends")
    p.add_argument("--timeout", type=float, default=3600.0, help="follow at most this long")
    p.add_argument("name")
    p.set_defaults(func=_logs_cmd)
    p = sub.add_parser("stop", help="SIGTERM, then SIGKILL after -t seconds")
    p.add_argument("-t", "--time", type=float, default=10.0)
    p.add_argument("names", nargs="+")
    p.set_defaults(func=_stop_cmd)
    p = sub.add_parser("rm", help="remove ended containers (-f: running ones too)")
    p.add_argument("-f", "--force", action="store_true")
    p.add_argument("names", nargs="+")
    p.set_defaults(func=_rm_cmd)
    p = sub.add_parser("inspect", help="a detached container's state, as JSON")
    p.add_argument("name")
    p.set_defaults(func=_inspect_cmd)
    p = sub.add_parser("exec", help="run a command in a running container, like `docker exec`")
    p.add_argument("--user", "-u")
    p.add_argument("-w", "--workdir")
    p.add_argument("-e", "--env", action="append", default=[])
    p.add_argument("name")
    p.add_argument("cmd", nargs=argparse.REMAINDER)
    p.set_defaults(func=_exec_cmd)
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
