"""System tests touch the real kernel: they need root and a machine declared disposable.
Each one runs between two censuses (the root conftest.py) and must leave nothing behind."""
import os
import uuid

import capabilities
import pytest


def pytest_collection_modifyitems(config, items):
    for item in items:
        if "tests/system" in str(item.fspath).replace(os.sep, "/"):
            item.add_marker(pytest.mark.system)
    # The tests marked `labvm` need systemd as PID 1 and a shared /: they run in the lab VM stage
    # (tests/labvm sets LABHELPER_LABVM=1 there), and are left out everywhere else rather than
    # skipped, so that a skip still means something is missing.
    if os.environ.get("LABHELPER_LABVM") != "1":
        kept, left_out = [], []
        for item in items:
            (left_out if item.get_closest_marker("labvm") else kept).append(item)
        if left_out:
            config.hook.pytest_deselected(items=left_out)
            items[:] = kept


@pytest.fixture(autouse=True)
def _needs_root_and_disposable():
    capabilities.need("root", "needs root: system tests change kernel state")
    capabilities.need("disposable")


@pytest.fixture
def uid():
    """A short random suffix for object names, so parallel runs never collide."""
    return uuid.uuid4().hex[:6]


@pytest.fixture
def host_folder(tmp_path):
    """A folder that stands for the learner's own data on the host: cleanup must never touch it."""
    folder = tmp_path / "host-data"
    (folder / "sub").mkdir(parents=True)
    (folder / "precious.txt").write_text("the learner's work")
    (folder / "sub" / "more.txt").write_text("more")
    return folder


@pytest.fixture
def network_owner(uid, monkeypatch):
    """Chapter 04's tests: ip, nft and ping are needed; the test's objects get an owner of their
    own, and whatever it made is removed at the end (the census then checks it was all)."""
    for program in ("ip", "nft", "ping"):
        capabilities.need(program)
    name = f"nettest-{uid}"
    monkeypatch.setenv("LABHELPER_OWNER", name)
    yield name
    from labhelper import cleanup
    result = cleanup.cleanup(owner=name)
    assert result.ok, result.failures


@pytest.fixture
def g(uid, monkeypatch):
    """Chapter 05's tests: a lab group of the test's own (owner cgtest-UID), removed at the end
    with everything the test made under that owner."""
    from labhelper import cgroups, cleanup
    monkeypatch.setenv("LABHELPER_OWNER", f"cgtest-{uid}")
    made = cgroups.group(f"g{uid}")
    yield made
    made.remove()
    assert cleanup.cleanup(owner=f"cgtest-{uid}").ok


@pytest.fixture
def owner(uid, monkeypatch):
    """The owner of a test's objects (LABHELPER_OWNER), whose cleanup at the end must succeed."""
    from labhelper import cleanup
    name = f"systest-{uid}"
    monkeypatch.setenv("LABHELPER_OWNER", name)
    yield name
    result = cleanup.cleanup(owner=name)
    assert result.ok, result.failures


@pytest.fixture
def bb(store):
    """The test's store with the busybox image in it (chapters 07 and 08: overlayfs and busybox-static)."""
    from labhelper import images
    capabilities.need("overlay")
    capabilities.need("busybox")
    images.busybox_image(store)
    return store


@pytest.fixture
def store(uid, owner):
    """An image store of the test's own (chapter 06), removed at the end with what it holds."""
    import os
    from labhelper import cleanup, images
    made = images.Store(f"/var/lib/labhelper/test-images-{uid}", owner=owner)
    yield made
    cleanup.cleanup(owner=owner)
    assert not os.path.exists(made.root)
