"""Chapter 07's exercise checks, each with right and wrong answers, on the real kernel: the checks
run containers themselves."""
from __future__ import annotations

import os

import pytest

import capabilities
from labhelper import cleanup
from labhelper.exercises import ch07


@pytest.fixture(autouse=True)
def _needs():
    capabilities.need("overlay")
    capabilities.need("busybox")


@pytest.fixture
def folder(uid, store):
    path = ch07.prepare_q1(f"/var/lib/labhelper/test-ch07-{uid}", owner=f"systest-{uid}")
    yield path
    cleanup.cleanup(owner="ch07")          # what the checks' containers left, were anything left


def test_q1_a_volume(folder, store):
    before = cleanup.census().names()
    check = lambda volumes: ch07.q1.checker(volumes, store, folder)  # noqa: E731
    assert "list you would pass" in check(f"{folder}:/out").message
    assert "no /out: your volume is at /elsewhere" in check([f"{folder}:/elsewhere"]).message
    assert "read-only" in check([f"{folder}:/out:ro"]).message
    assert "could not start" in check(["/out:" + folder]).message                 # reversed
    assert "could not start" in check(["/tmp:/out"]).message                      # not a lab folder
    assert not os.path.exists(f"{folder}/greeting")
    result = check([f"{folder}:/out"])
    assert result.ok is True, result
    assert open(f"{folder}/greeting").read() == "hello from inside\n"
    assert cleanup.census().names() == before


def test_q2_what_root_inside_can_do(store):
    seen = ch07.measure(store)
    assert set(seen) == set(ch07.PROBES)
    assert seen["chown a file"] and seen["ping over loopback"] and seen["make a device node"]
    assert not any(seen[k] for k in ("mount a tmpfs", "set the clock", "read the kernel log",
                                     "open the device node it made", "write a kernel setting"))
    check = lambda answer: ch07.q2.checker(answer, store, seen)  # noqa: E731
    assert check(dict(seen)).ok is True
    flipped = dict(seen, **{"mount a tmpfs": True})
    result = check(flipped)
    assert result.ok is False and "'mount a tmpfs' is refused inside" in result.message
    assert check({"chown a file": True}).ok is False                             # not every operation
    assert check({k: "yes" for k in seen}).ok is False                           # not booleans
    # The solution's one-liner is right.
    assert check({n: n in ("chown a file", "make a device node", "ping over loopback") for n in ch07.PROBES}).ok


def test_q3_two_containers_talking(store, uid, network_owner):
    from labhelper import container
    bridge, server = f"t{uid}", f"srv-{uid}"
    before = cleanup.census().names()
    ch07.prepare_q3(store, bridge=bridge, server=server, owner=network_owner)
    try:
        address = container.inspect(server)["address"].split("/")[0]
        check = lambda answer: ch07.q3.checker(answer, store, bridge, server)  # noqa: E731
        assert "as a list" in check(f"nc {address} 7000").message
        assert "own loopback" in check(["nc", "127.0.0.1", "7000"]).message
        assert "did not arrive" in check(["nc", address, "7001"]).message
        result = check(["nc", address, "7000"])
        assert result.ok is True, result
        assert ch07.prepare_q3(store, bridge=bridge, server=server, owner=network_owner) == server   # idempotent
    finally:
        container.rm(server, force=True)
        cleanup.cleanup(owner=network_owner)
        cleanup.cleanup(owner="ch07")
    assert cleanup.census().names() == before
