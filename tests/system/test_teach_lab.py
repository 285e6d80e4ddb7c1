"""lab.start against the real kernel: a chapter's first cell removes leftovers, never what another
live kernel of the same chapter is using (B14)."""
import os
import subprocess
import sys

from labhelper import registry
from labhelper.teach import lab

from systest import in_scratch


def _two_kernels_of_one_chapter():
    # Another kernel of chapter 08, alive, holding a folder; and one made by this kernel.
    theirs, mine = "/var/lib/labhelper/ch08-theirs", "/var/lib/labhelper/ch08-mine"
    code = (f"import os, time\nfrom labhelper import registry\nos.makedirs({theirs!r})\n"
            f"registry.ledger().add('dir', {theirs!r}, owner='ch08')\nprint('ready', flush=True)\ntime.sleep(60)\n")
    other = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert other.stdout.readline() == "ready\n"
        os.makedirs(mine)
        registry.ledger().add("dir", mine, owner="ch08")
        lab.start("08")
        after_first = (os.path.isdir(theirs), os.path.isdir(mine))
    finally:
        other.kill()
        other.wait()
        other.stdout.close()
    lab.start("08")  # now the other kernel is gone: its folder is an orphan
    return after_first, os.path.isdir(theirs), registry.ledger().records()


def test_lab_start_spares_a_live_kernel_of_the_same_chapter():
    # B14: the notebook open twice must not lose the other kernel's objects.
    after_first, theirs_after_death, left = in_scratch(_two_kernels_of_one_chapter)
    assert after_first == (True, False)
    assert not theirs_after_death and left == []
