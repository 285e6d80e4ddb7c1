"""labhelper.trace.categories: which part of the kernel each system call talks to. No root needed."""
from __future__ import annotations

import pytest

from labhelper import trace as T
from labhelper.errors import Refused
from labhelper.trace.categories import CATEGORY_SYSCALLS, check_category


def test_category_of_a_call():
    assert T.category("openat") == "file" and T.category("mmap") == "memory"
    assert T.category("kill") == "signal" and T.category("connect") == "network"
    assert T.category("clock_gettime") == "other" and T.category(None) == "other"
    assert set(T.CATEGORIES.values()) <= set(T.CATEGORY_NAMES)


def test_every_listed_call_is_in_exactly_one_category():
    listed = [name for names in CATEGORY_SYSCALLS.values() for name in names]
    assert len(listed) == len(set(listed)) == len(T.CATEGORIES)
    for cat, names in CATEGORY_SYSCALLS.items():
        assert all(T.CATEGORIES[n] == cat for n in names)
    # every category but "other" has its list; "other" is what no list names
    assert list(CATEGORY_SYSCALLS) == [c for c in T.CATEGORY_NAMES if c != "other"]


def test_check_category_refuses_unknown_names():
    for cat in (None, *T.CATEGORY_NAMES):
        check_category(cat)  # accepted: no error
    with pytest.raises(ValueError, match="unknown category 'disk'; choose one of file, process") as info:
        check_category("disk")
    assert isinstance(info.value, Refused)
