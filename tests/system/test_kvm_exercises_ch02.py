"""Chapter 02 exercises whose checks run guests on /dev/kvm: each fed a right and a wrong answer."""
from __future__ import annotations

import capabilities
import pytest

from labhelper import kvm
from labhelper.exercises import ch02
from labhelper.kvm import guests

pytestmark = pytest.mark.kvm

for _cap in ("kvm", "binutils"):
    if not capabilities.have(_cap):
        pytest.skip(capabilities.reason(_cap, capabilities.probe(_cap)[1]), allow_module_level=True)


def test_q1_right():
    r = ch02.q1.check(guests.ADD_TWO)
    assert r.ok, r.message


@pytest.mark.parametrize("source,words", [
    ("    mov ax, 5555\n    out 0x10, ax\n    hlt\n", "not the sum"),           # hard-coded
    ("    mov ax, word ptr [0x600]\n    hlt\n", "without reporting"),
    ("    mov ax, word ptr [0x600]\n    add ax, word ptr [0x602]\n    out 0x10, ax\nspin:\n    jmp spin\n",
     "still running"),
])
def test_q1_wrong(source, words):
    r = ch02.q1.check(source)
    assert not r.ok and words in r.message, r.message


def test_q2_number_is_what_the_vm_counts():
    with kvm.Machine(ch02.COUNT_ME) as m:
        r = m.run()
    assert r.exits == ch02.COUNT_ME_EXITS
    assert ch02.q2.check(r.exits).ok and not ch02.q2.check(r.exits - 1).ok
    assert r.counts == {"IoOut": 5, "MmioWrite": 1, "Hlt": 1}


def test_q3_right_and_wrong():
    assert ch02.q3.check(guests.pv_source(ch02.FAST_MESSAGE)).ok
    slow = ch02.q3.check(guests.serial_source(ch02.FAST_MESSAGE))
    assert not slow.ok and "exits" in slow.message and "message is right" in slow.message
    other = ch02.q3.check(guests.pv_source("something else\n"))
    assert not other.ok and "not ch02.FAST_MESSAGE" in other.message
