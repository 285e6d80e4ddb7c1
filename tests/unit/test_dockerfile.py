from __future__ import annotations

import pytest

from labhelper.errors import Refused
from labhelper.images import dockerfile


def test_the_subset_parses_with_continuations_and_comments():
    steps = dockerfile.parse("# c\nFROM busybox\nENV A=1 \\\n    B=2\n\nRUN echo hi\nCMD [\"sh\"]\n")
    assert [(s.line, s.keyword) for s in steps] == [(2, "FROM"), (3, "ENV"), (6, "RUN"), (7, "CMD")]
    assert steps[1].args == "A=1  B=2"                 # each continued line stripped, joined by a space
    assert dockerfile._argv('["ls", "-l"]', 1) == ["ls", "-l"]
    assert dockerfile._argv("echo $A", 1) == ["/bin/sh", "-c", "echo $A"]
    assert dockerfile._env("A=1 B='two words'", 1) == ["A=1", "B=two words"]
    assert dockerfile._env("KEY some value", 1) == ["KEY=some value"]


@pytest.mark.parametrize("text, message", [
    ("RUN true\n", "starts with FROM"),
    ("", "starts with FROM"),
    ("FROM a\nADD x /\n", "not in the lab's Dockerfile subset"),
    ("FROM a\nFROM b\n", "one FROM only"),
    ("FROM a\nRUN\n", "needs arguments"),
    ("FROM a\nRUN echo \\", "middle of a continued line"),
])
def test_what_is_not_in_the_subset_is_refused(text, message):
    with pytest.raises(Refused, match=message):
        dockerfile.parse(text)


def test_bad_forms_are_refused():
    with pytest.raises(Refused, match="not a JSON list"):
        dockerfile._argv('["ls"', 3)
    with pytest.raises(Refused, match="non-empty JSON list"):
        dockerfile._argv("[]", 3)
    with pytest.raises(Refused, match="not an environment variable name"):
        dockerfile._env("1A=2", 3)
