"""Chapter 06's speed goals for image layers, measured side by side in one run (not a test):

- capture: a 50 MB upper folder as a layer, tar and sha256 (``images.write_layer`` into the
  store's blob writer: PAX tar, sorted names, xattrs, hashed and written by a second thread as
  tar and sha256sum run side by side in a pipe, the blob named by its digest; the store flushes
  it to disk once per image, at the commit that names the image, which is not timed here)
  at least as fast as GNU ``tar --sort=name --format=pax --numeric-owner -c . | sha256sum`` (the
  same bytes' worth of work, minus the store: tar's output goes nowhere but the hash; GNU tar's
  PAX headers differ from labhelper's, so the digests differ: the work is compared, not the bytes).
  Goal 1.0x. A row shown, not judged, gives GNU tar labhelper's whole job: ``tar | tee FILE |
  sha256sum`` then ``sync FILE`` (the blob kept and flushed, which the store does once per image).
- export: ``images.export`` (one image of the store written as a standalone OCI image layout,
  each blob read back verified, then copied) within 1.5x of ``skopeo copy
  --dest-oci-accept-uncompressed-layers oci:STORE:NAME oci:DEST:NAME``. umoci has no export
  command; skopeo is the honest peer for the same bytes: it reads our store as the OCI layout it
  is, checks each blob's digest while copying it, and writes a new layout. The flag keeps skopeo
  from gzipping the uncompressed layer on its way (its default for oci: destinations), which
  would be other work and other bytes. Its time includes starting a Go program (~tens of ms).
- import: ``images.import_layout`` (every blob's size and digest checked, the layer unpacked
  by the safe extractor into an overlay lower folder, its DiffID checked, the blobs stored and
  flushed with one syncfs before the image is named) within 1.5x of ``umoci unpack --image LAYOUT:NAME BUNDLE`` (digests checked, the
  layer unpacked into a root filesystem; umoci also hashes every unpacked file again for its
  mtree manifest, and writes a runtime config). Goal 1.5x.

The 50 MB upper folder is a realistic mix: three big files (30 MB), about two thousand small
ones (1 to 20 kB) in nested folders, a few symlinks and hard links; random bytes (incompressible,
though nothing here compresses). The image exported and imported is that folder as one layer.
Everything lives in a lab folder (mounts.make_dir) removed at the end (cleanup of the
benchmark's owner). The two sides alternate round by round; the figure per side is the median of
its rounds, the ratio ours / theirs. Exit status 1 if a goal is missed.

    LABHELPER_DISPOSABLE=1 .venv/bin/python benchmarks/images.py [--rounds N] [--mb 50] [--profile WHICH]
"""
from __future__ import annotations

import argparse
import os
import random
import shutil
import statistics
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from labhelper import cleanup, images, mounts  # noqa: E402

NAME = "bench"                  # the image; also its ref.name in the exported layout (no ':' to parse)


def make_upper(folder: str, total: int, seed: int = 6) -> tuple[int, int]:
    """Fill ``folder`` with about ``total`` bytes: (files, bytes) made."""
    rng = random.Random(seed)
    files = made = 0
    big = [total * 30 // 100, total * 18 // 100, total * 12 // 100]       # 60% in three big files
    os.makedirs(f"{folder}/opt/big")
    for i, size in enumerate(big):
        with open(f"{folder}/opt/big/blob-{i}.bin", "wb") as fh:
            fh.write(rng.randbytes(size))
        files, made = files + 1, made + size
    i = 0
    while made < total:
        sub = f"{folder}/usr/share/pkg-{i % 40:02d}/d{i % 7}"
        os.makedirs(sub, exist_ok=True)
        size = min(rng.randint(1_000, 20_000), total - made)
        with open(f"{sub}/file-{i:05d}.dat", "wb") as fh:
            fh.write(rng.randbytes(size))
        if i % 97 == 0:
            os.symlink(f"file-{i:05d}.dat", f"{sub}/link-{i:05d}")
        if i % 211 == 0:
            os.link(f"{sub}/file-{i:05d}.dat", f"{sub}/hard-{i:05d}")
        files, made, i = files + 1, made + size, i + 1
    return files, made


def tool(*argv: str) -> None:
    done = subprocess.run(argv, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(argv)} exited with {done.returncode}: {done.stderr.strip()}")


def timed(fn, *args) -> float:
    t0 = time.perf_counter()
    fn(*args)
    return time.perf_counter() - t0


def tar_sha256(folder: str) -> str:
    """GNU tar into sha256sum, a pipeline of two processes, as a shell runs it."""
    tar = subprocess.Popen(["tar", "-C", folder, "--sort=name", "--format=pax", "--numeric-owner", "-cf", "-", "."],
                           stdout=subprocess.PIPE)
    try:
        out = subprocess.run(["sha256sum"], stdin=tar.stdout, capture_output=True, check=True).stdout
    finally:
        tar.stdout.close()
        if tar.wait() != 0:
            raise SystemExit(f"tar exited with {tar.returncode}")
    return out.split()[0].decode()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--mb", type=int, default=50, help="size of the upper folder, in MB")
    parser.add_argument("--profile", choices=("capture", "export", "import"),
                        help="also profile labhelper's side of one measure (cProfile, top 25 by cumulative time)")
    args = parser.parse_args()
    missing = [t for t in ("tar", "sha256sum", "skopeo", "umoci") if shutil.which(t) is None]
    if missing:
        print(f"skipped: {', '.join(missing)} not installed (apt-get install {' '.join(missing)}): no peer to "
              "measure against")
        return 0
    owner = f"bench-images-{os.getpid()}"
    os.environ.setdefault("LABHELPER_OWNER", owner)
    base = mounts.make_dir(f"/var/lib/labhelper/bench-images-{os.getpid()}", owner=owner)
    times: dict[str, tuple[list[float], list[float]]] = {k: ([], []) for k in ("capture", "export", "import")}
    shown: list[float] = []
    try:
        upper = f"{base}/upper"
        files, size = make_upper(upper, args.mb * 1_000_000)
        store = images.Store(f"{base}/store", owner=owner)
        img = images.import_tree(store, upper, NAME, created_by="the benchmark's upper folder")
        layer = img.layers[0]

        scratch = images.Store(f"{base}/capture", owner=owner)      # not the image's store: its blob is unlinked

        def ours_capture() -> float:
            t0 = time.perf_counter()
            with scratch.writer() as w:
                got = images.write_layer(upper, w)
            took = time.perf_counter() - t0
            # Not timed: the next round writes a new blob too (an existing one is verified, not written).
            os.unlink(scratch.blob_path(got.blob.digest))
            return took

        def tee_sync() -> float:
            """Shown, not judged: GNU tar doing what write_layer does, the tar kept in a file made durable."""
            out = f"{base}/tee.tar"
            t0 = time.perf_counter()
            tool("sh", "-c", f"tar -C '{upper}' --sort=name --format=pax --numeric-owner -cf - . | tee '{out}' "
                             f"| sha256sum >/dev/null && sync '{out}'")
            took = time.perf_counter() - t0
            os.unlink(out)
            return took

        def ours_export(dest: str) -> None:
            images.export(store, NAME, dest)

        def skopeo_export(dest: str) -> None:
            tool("skopeo", "copy", "--quiet", "--dest-oci-accept-uncompressed-layers", f"oci:{store.root}:{NAME}",
                 f"oci:{dest}:{NAME}")

        layout = f"{base}/layout"
        images.export(store, NAME, layout)

        def ours_import(root: str) -> None:
            # A store not recorded in the ledger (within=): fresh() removes it before the next round.
            images.import_layout(images.Store(root, within=(base,)), layout, NAME)

        def umoci_import(bundle: str) -> None:
            tool("umoci", "unpack", "--image", f"{layout}:{NAME}", bundle)

        def fresh(path: str) -> str:
            if os.path.lexists(path):
                shutil.rmtree(path)
            return path

        # Warm up both sides of each (page cache, imports, the Go binaries).
        tar_sha256(upper)
        ours_capture()
        tee_sync()
        skopeo_export(fresh(f"{base}/exp-theirs"))
        ours_export(fresh(f"{base}/exp-ours"))
        umoci_import(fresh(f"{base}/imp-theirs"))
        ours_import(fresh(f"{base}/imp-ours"))
        for r in range(args.rounds):
            for side in ([0, 1] if r % 2 == 0 else [1, 0]):
                if side == 0:
                    times["capture"][0].append(ours_capture())
                else:
                    times["capture"][1].append(timed(tar_sha256, upper))
            shown.append(tee_sync())
            for side in ([0, 1] if r % 2 == 0 else [1, 0]):
                if side == 0:
                    times["export"][0].append(timed(ours_export, fresh(f"{base}/exp-ours")))
                else:
                    times["export"][1].append(timed(skopeo_export, fresh(f"{base}/exp-theirs")))
            for side in ([0, 1] if r % 2 == 0 else [1, 0]):
                if side == 0:
                    times["import"][0].append(timed(ours_import, fresh(f"{base}/imp-ours")))
                else:
                    times["import"][1].append(timed(umoci_import, fresh(f"{base}/imp-theirs")))
        if args.profile:
            import cProfile
            import pstats
            what = {"capture": (ours_capture,), "export": (ours_export, fresh(f"{base}/exp-ours")),
                    "import": (ours_import, fresh(f"{base}/imp-ours"))}[args.profile]
            prof = cProfile.Profile()
            prof.runcall(*what)
            pstats.Stats(prof, stream=sys.stderr).sort_stats("cumulative").print_stats(25)
    finally:
        result = cleanup.cleanup(owner=owner)
        if not result.ok:
            print(f"cleanup failed: {result.failures}", file=sys.stderr)
    rows = {"capture": ("capture a layer", "labhelper: write_layer (tar, sha256, blob)",
                        "tar --sort=name --format=pax | sha256sum", 1.0),
            "export": ("export an OCI layout", "labhelper: images.export",
                       "skopeo copy oci: oci: (blobs as they are)", 1.5),
            "import": ("import an OCI layout", "labhelper: images.import_layout",
                       "umoci unpack", 1.5)}
    ok = True
    print(f"{'measure':22} {'path':44} {'median':>10} {'ratio':>7} goal")
    for key, (title, our_path, their_path, goal) in rows.items():
        ours, theirs = (statistics.median(v) for v in times[key])
        ratio = ours / theirs
        verdict = "ok" if ratio <= goal else "OVER"
        ok &= verdict == "ok"
        print(f"{title:22} {their_path:44} {theirs * 1000:8.1f}ms {1:6.2f}x")
        print(f"{title:22} {our_path:44} {ours * 1000:8.1f}ms {ratio:6.2f}x <= {goal}x {verdict}")
        if key == "capture":
            same = statistics.median(shown)
            print(f"{title:22} {'tar | tee FILE | sha256sum; sync FILE':44} {same * 1000:8.1f}ms "
                  f"{same / theirs:6.2f}x (shown: the blob kept, and flushed as a commit does)")
    print(f"({files} files, {size / 1e6:.1f} MB in the upper folder; layer blob {layer.blob.size / 1e6:.1f} MB; "
          f"{args.rounds} rounds, sides alternating)")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
