from __future__ import annotations

import pytest

from labhelper import capabilities as caps


def test_names_numbers_and_masks():
    assert caps.number("SYS_ADMIN") == 21 == caps.number("cap_sys_admin")
    assert caps.decode("00000000a80425fb") == tuple(sorted(caps.DOCKER_DEFAULT, key=caps.number))
    assert caps.decode(1 << 21 | 1) == ("CHOWN", "SYS_ADMIN") and caps.decode(1 << 50) == ("CAP_50",)
    with pytest.raises(ValueError, match="no capability named"):
        caps.number("ROOT")


def test_sets_and_last_are_read_from_a_proc_folder(tmp_path):
    (tmp_path / "9").mkdir()
    (tmp_path / "9" / "status").write_text("Name:\tx\nCapInh:\t0000000000000000\nCapBnd:\t00000000a80425fb\n")
    sets = caps.of(9, proc=str(tmp_path))
    assert sets == {"CapInh": (), "CapBnd": caps.decode("a80425fb")}
    (tmp_path / "sys" / "kernel").mkdir(parents=True)
    (tmp_path / "sys" / "kernel" / "cap_last_cap").write_text("40\n")
    assert caps.last(str(tmp_path)) == 40
    assert caps.last(str(tmp_path / "none")) == len(caps.NAMES) - 1
