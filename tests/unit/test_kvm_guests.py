"""The guest assembler: GNU as + ld + objcopy, and the listing it builds. No /dev/kvm needed."""
from __future__ import annotations


import capabilities
import pytest

from labhelper.errors import Refused, RequirementError
from labhelper.kvm import guests
from labhelper.kvm.guests import AssemblerError, assemble

pytestmark = capabilities.needs("binutils", "GNU binutils (as, ld, objcopy) is not installed")


def test_real_mode_bytes_are_the_known_encoding():
    p = assemble("    mov dx, 0x3f8\n    out dx, al\n    hlt\n", name="t")
    assert p.code == bytes.fromhex("baf803 ee f4")
    assert repr(p) == "Program('t', mode=real, origin=0x1000, 5 bytes)"
    assert [(ln.address, ln.code) for ln in p.lines] == [
        (0x1000, bytes.fromhex("baf803")), (0x1003, b"\xee"), (0x1004, b"\xf4")]


def test_long_mode_uses_64_bit_encodings():
    p = assemble("    mov rax, 0x1122334455667788\n    hlt\n", mode="long")
    assert p.code == bytes.fromhex("48b88877665544332211") + b"\xf4"
    assert p.mode == "long"


def test_labels_are_linked_at_the_origin():
    src = "    mov si, offset msg\n    hlt\nmsg:\n    .ascii \"hi\"\n"
    low = assemble(src, origin=0x1000)
    high = assemble(src, origin=0x2000)
    assert low.code[1:3] == (0x1004).to_bytes(2, "little")     # mov si, imm16 = address of msg
    assert high.code[1:3] == (0x2004).to_bytes(2, "little")
    assert low.symbols["msg"] == 0x1004 and high.address_of("msg") == 0x2004
    with pytest.raises(KeyError, match="no label 'nope'"):
        low.address_of("nope")


def test_listing_covers_every_byte_and_shows_addresses():
    for src, mode in ((guests.SERIAL_HELLO, "real"), (guests.PV_HELLO, "real"), (guests.MMIO_HELLO, "real"),
                      (guests.LONG_HELLO, "long"), (guests.TRIPLE_FAULT, "long"), (guests.ADD_TWO, "real")):
        p = assemble(src, mode=mode)
        assert b"".join(ln.code for ln in p.lines) == p.code, src
        placed = [ln for ln in p.lines if ln.address is not None]
        assert placed[0].address == p.origin
        for a, b in zip(placed, placed[1:]):
            assert a.address + len(a.code) == b.address
        # Source lines are the learner's, numbered from 1 (our header line is not counted).
        assert p.lines[0].line == 1 and p.lines[0].source == src.split("\n")[0]


def test_listing_text_and_mark():
    p = assemble(guests.SERIAL_HELLO)
    text = p.listing()
    assert text.splitlines()[0].split() == ["address", "bytes", "source"]
    assert "0x1000   ba f8 03" in text and "out dx, al" in text
    out = p.address_of("next") + 1                       # the `out` after lodsb
    marked = p.listing(mark=out)
    arrow = [l for l in marked.splitlines() if l.startswith("=>")]
    assert len(arrow) == 1 and "out dx, al" in arrow[0]
    assert p.line_at(out).source.strip().startswith("out dx, al")
    assert p.line_at(0x9999) is None


def test_long_data_wraps_in_the_listing():
    p = assemble(guests.serial_source("x" * 20))
    rows = [l for l in p.listing().splitlines() if "78 78" in l]
    assert len(rows) == 3                                 # 20 bytes at 8 per row


def test_ascii_directive_escapes():
    assert guests.ascii_directive('a"b\\c\n\x01') == '.ascii "a\\"b\\\\c\\n\\001"'
    p = assemble(f"    {guests.ascii_directive(bytes(range(256)))}\n")
    assert p.code == bytes(range(256))


def test_errors_name_the_learners_line():
    with pytest.raises(AssemblerError) as info:
        assemble("    mov ax, 1\n    bogus ax\n")
    text = str(info.value)
    assert "line 2:" in text and "bogus" in text and "assembling failed" in text


def test_data_outside_text_is_refused():
    with pytest.raises(AssemblerError, match=r"\.data"):
        assemble("    hlt\n.data\n    .byte 1\n")


def test_bad_arguments():
    with pytest.raises(ValueError, match="mode") as mode:
        assemble("hlt", mode="protected")
    with pytest.raises(ValueError, match="origin") as origin:
        assemble("hlt", origin=0x1001)
    # refusals of bad input: LabError and ValueError at once
    assert isinstance(mode.value, Refused) and isinstance(origin.value, Refused)
    assert str(mode.value) == "mode must be one of real, long, not 'protected'"


def test_missing_binutils_is_a_requirement(monkeypatch):
    monkeypatch.setattr(guests.shutil, "which", lambda name: None)
    guests._assemble.cache_clear()
    try:
        with pytest.raises(RequirementError, match="binutils"):
            assemble("    hlt # unique\n")
    finally:
        guests._assemble.cache_clear()


def test_no_temporary_files_left(tmp_path, monkeypatch):
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    import tempfile
    monkeypatch.setattr(tempfile, "tempdir", None)
    assemble("    nop # tmp check\n    hlt\n")
    with pytest.raises(AssemblerError):
        assemble("    nope # tmp check\n")
    assert list(tmp_path.iterdir()) == []


def test_serial_source_refuses_an_empty_message():
    # `loop` decrements cx before testing it: cx = 0 would mean 65,536 iterations.
    for empty in ("", b""):
        with pytest.raises(ValueError, match="at least one byte") as info:
            guests.serial_source(empty)
        assert isinstance(info.value, Refused)
    with pytest.raises(ValueError, match="65,535") as info:
        guests.serial_source(b"x" * 0x10000)
    assert isinstance(info.value, Refused)
    assert "message_end - message" in guests.serial_source("x")
