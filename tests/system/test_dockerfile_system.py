"""`labhelper build`: a Dockerfile subset made into layers of chapter 06's store, run by chapter
07's containers; COPY never reads outside its context; a failed build leaves no name."""
from __future__ import annotations

import os

import pytest

import capabilities
from labhelper import cleanup, container, images
from labhelper.errors import LabError, Refused
from systest import labhelper_cli

pytestmark = pytest.mark.images

DOCKERFILE = """# a small web image
FROM busybox
ENV GREETING=hi \\
    MODE=lab
WORKDIR /srv
COPY site /srv/www
COPY note.txt ./
RUN echo "$GREETING from build in $(pwd)" > built.txt
CMD ["sh", "-c", "cat /srv/www/index.html /srv/built.txt /srv/note.txt; echo $MODE"]
"""


@pytest.fixture
def ctx(tmp_path, store):
    capabilities.need("busybox")
    capabilities.need("overlay")
    images.busybox_image(store)
    (tmp_path / "site").mkdir()
    (tmp_path / "site" / "index.html").write_text("hello web\n")
    (tmp_path / "note.txt").write_text("note\n")
    (tmp_path / "Dockerfile").write_text(DOCKERFILE)
    return tmp_path


def test_a_dockerfile_becomes_layers_and_runs(ctx, store):
    img = images.build_file(store, str(ctx / "Dockerfile"), "web:1")
    assert len(img.layers) == 4                                  # busybox, two COPY, one RUN
    assert [h.created_by for h in img.history][-6:] == [
        "ENV GREETING=hi  MODE=lab", "WORKDIR /srv", "COPY site /srv/www", "COPY note.txt ./",
        'RUN echo "$GREETING from build in $(pwd)" > built.txt',
        'CMD ["sh", "-c", "cat /srv/www/index.html /srv/built.txt /srv/note.txt; echo $MODE"]']
    assert {i.name for i in images.images(store)} == {"busybox", "web:1"}        # no step left named
    r = container.run("web:1", store=store)
    assert r.output == "hello web\nhi from build in /srv\nnote\nlab\n", r.output
    assert [c.kind + " " + c.path for c in images.diff(store, "web:1")] == ["C /srv", "A /srv/built.txt"]


def test_copy_stays_in_its_context_and_a_failed_build_leaves_no_name(ctx, store, tmp_path):
    (ctx / "escape").symlink_to("/etc")
    for line, message in (("COPY ../x /x", "outside the build context"),
                          ("COPY escape/hostname /x", "through a symlink"),
                          ("COPY missing /x", "not found")):
        (ctx / "Bad").write_text(f"FROM busybox\n{line}\n")
        with pytest.raises(Refused, match=message):
            images.build_file(store, str(ctx / "Bad"), "bad:1")
    (ctx / "Bad").write_text("FROM busybox\nRUN touch /ok\nRUN exit 3\n")
    with pytest.raises(LabError, match="exited with 3"):
        images.build_file(store, str(ctx / "Bad"), "bad:1")
    assert {i.name for i in images.images(store)} == {"busybox"}


def test_the_cli_builds_and_runs(ctx, store):
    built = labhelper_cli("build", "--store", store.root, "-f", str(ctx / "Dockerfile"), "-t", "web:2", str(ctx))
    assert built.returncode == 0 and built.stdout.startswith("web:2: 4 layers"), built.stderr
    ran = labhelper_cli("run", "--store", store.root, "web:2")
    assert ran.returncode == 0 and ran.stdout.endswith("lab\n")
    bad = labhelper_cli("build", "--store", store.root, "-f", str(ctx / "Dockerfile"), "-t", "Bad Name")
    assert bad.returncode == 2
    assert not any(o.kind == "mount" for o in cleanup.census().objects)
    assert os.path.isdir(store.root)
