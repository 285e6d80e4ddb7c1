"""The lab VM stage's own logic, without booting anything: it must provision exactly as the
Vagrantfile says (tests/labvm/vm.py reads the provisioner from the Vagrantfile), and refuse to
guess what it cannot read."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "labvm"))
from vm import REPO, Provisioner, provisioner  # noqa: E402


def test_the_provisioner_is_the_vagrantfiles():
    how = provisioner(18888)
    assert how.path == "scripts/provision.sh" and (REPO / how.path).is_file()
    assert how.args == ("--lab-vm",)
    # LAB_PORT.to_s is the port this run forwards: the printed URL must name it.
    assert how.env == {"LABHELPER_SRC": "/vagrant", "LABHELPER_HOST_PORT": "18888"}


def test_the_command_is_what_vagrant_sends_its_shell():
    text = Provisioner("scripts/provision.sh", ("--lab-vm",), {"A": "x y", "B": "1"}).command()
    assert text.splitlines() == ["chmod +x /tmp/vagrant-shell", "export A='x y'", "export B=1",
                                 "/tmp/vagrant-shell --lab-vm"]


def _vagrantfile(tmp_path: Path, line: str) -> Path:
    path = tmp_path / "Vagrantfile"
    path.write_text('Vagrant.configure("2") do |config|\n  ' + line + "\n\n  config.vm.post_up_message = 'x'\nend\n")
    return path


@pytest.mark.parametrize("line, words", [
    ('config.vm.provision "lab", type: "shell", path: "p.sh", env: { "X" => ENV["HOME"] }', "cannot evaluate"),
    ('config.vm.provision "lab", type: "ansible", playbook: "p.yml"', "not a shell provisioner"),
    ('config.vm.provision "lab", type: "shell", path: "p.sh", privileged: false', "not privileged"),
    ('config.vm.provision "other", type: "shell", path: "p.sh"', "no `config.vm.provision"),
    ("config.vm.provision \"lab\", type: \"shell\", path: \"p.sh\", args: ['--lab-vm']", "double-quoted"),
])
def test_what_it_cannot_read_is_refused_by_name(tmp_path: Path, line: str, words: str):
    with pytest.raises(ValueError, match=words):
        provisioner(8888, _vagrantfile(tmp_path, line))


def test_a_changed_vagrantfile_is_followed(tmp_path: Path):
    line = ('config.vm.provision "lab", type: "shell", path: "scripts/other.sh", args: ["--lab-vm", "--x"],\n'
            '    run: "always",\n    env: { "LABHELPER_SRC" => "/srv/course", "LABHELPER_HOST_PORT" => LAB_PORT.to_s }')
    how = provisioner(9999, _vagrantfile(tmp_path, line))
    assert how == Provisioner("scripts/other.sh", ("--lab-vm", "--x"),
                              {"LABHELPER_SRC": "/srv/course", "LABHELPER_HOST_PORT": "9999"})
