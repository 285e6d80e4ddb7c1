"""A container request is checked whole before anything is made (no root needed: nothing is)."""
from __future__ import annotations

import pytest

from labhelper import container
from labhelper.container import config, runtime
from labhelper.errors import Refused
from labhelper.images import Image


def test_a_good_request_is_normalised():
    cfg = container.check("busybox", ["sh", "-c", "true"], name="web", env={"A": "1"}, workdir="/srv/../app//x",
                          user="1000", memory="64m", cpus=0.5, pids=32, volumes=["/var/lib/labhelper/data:/data:ro"])
    assert cfg.command == ("sh", "-c", "true") and cfg.hostname == "web" and cfg.env == ("A=1",)
    assert cfg.workdir == "/app/x" and cfg.user == (1000, 1000)
    assert cfg.limits == {"memory": "64m", "cpu": 0.5, "pids": 32}
    assert cfg.volumes == (container.Volume("/var/lib/labhelper/data", "/data", True),)
    assert repr(cfg.volumes[0]) == "/var/lib/labhelper/data:/data:ro"
    assert container.check("busybox").name.startswith("c-") and container.check("busybox").command is None
    assert config.parse_user("root") == (0, 0) and config.parse_user("5:6") == (5, 6)


@pytest.mark.parametrize("options, message", [
    ({"command": "echo hi"}, "list of words"),
    ({"command": []}, "non-empty list"),
    ({"command": ["a\0b"]}, "non-empty list"),
    ({"name": "a/b"}, "not a container name"),
    ({"name": "x" * 65}, "at most 64"),
    ({"hostname": "a_b"}, "hostname"),
    ({"env": ["1X=2"]}, "environment entry"),
    ({"env": ["X"]}, "NAME=VALUE"),
    ({"workdir": "rel"}, "absolute"),
    ({"workdir": "/dev/shm"}, "not in /proc"),
    ({"user": "bob"}, "UID or UID:GID"),
    ({"user": "4294967295"}, "below 4294967295"),
    ({"memory": "1k"}, "floor"),
    ({"cpus": 0}, "more than 0"),
    ({"pids": True}, "whole number"),
    ({"volumes": ["/etc:/x"]}, "only below"),
    ({"volumes": ["/var/lib/labhelper:/x"]}, "only below"),
    ({"volumes": ["/var/lib/labhelper/images/layers:/x"]}, "lab's own state"),
    ({"volumes": ["/var/lib/labhelper/containers:/x"]}, "lab's own state"),
    ({"volumes": ["/var/lib/labhelper/d:/proc/x"]}, "not /, nor in /proc"),
    ({"volumes": ["/var/lib/labhelper/d:/"]}, "not /, nor in /proc"),
    ({"volumes": ["/var/lib/labhelper/d:x"]}, "absolute"),
    ({"volumes": ["/var/lib/labhelper/d:/x:rx"]}, "SOURCE:DESTINATION"),
    ({"volumes": ["/var/lib/labhelper/d:/x", "/var/lib/labhelper/e:/x"]}, "share a destination"),
    ({"net": "host"}, "'none'"),
    ({"timeout": 0}, "more than 0"),
])
def test_bad_requests_are_refused(options, message):
    command = options.pop("command", ["true"])
    with pytest.raises(Refused, match=message):
        container.check("busybox", command, **options)


def _image(**settings):
    return Image("img", None, None, (), (), "amd64", "linux", settings)


def test_the_image_settings_merge_as_dockers_do():
    cfg = container.check("img", None, env=["B=override"], name="n")
    spec = runtime.settings(cfg, _image(Entrypoint=["/bin/tini", "--"], Cmd=["sh"], Env=["A=1", "B=2"],
                                         WorkingDir="/app", User="7:8"))
    assert spec["command"] == ["/bin/tini", "--", "sh"] and spec["workdir"] == "/app" and spec["user"] == (7, 8)
    assert spec["env"][:2] == ["A=1", "B=override"] and "HOSTNAME=n" in spec["env"]
    assert any(e.startswith("PATH=/usr/local/sbin") for e in spec["env"])
    given = runtime.settings(container.check("img", ["ls"], workdir="/x", user="0"), _image(Cmd=["sh"], User="7"))
    assert given["command"] == ["ls"] and given["workdir"] == "/x" and given["user"] == (0, 0)
    with pytest.raises(Refused, match="no command"):
        runtime.settings(container.check("img"), _image())
    with pytest.raises(Refused, match="is a name"):
        runtime.settings(container.check("img", ["ls"]), _image(User="www-data"))


def test_a_result_reads_like_docker_ps():
    assert repr(container.Result("web", 137, "", "", False, True)) == "Result(web: exit 137 (OOM-killed))"
    assert repr(container.Result("w", 127, "", "'x': not found")) == "Result(w: exit 127; 'x': not found)"
