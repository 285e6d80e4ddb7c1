"""The lab VM, booted for real: a bare image (tests/labvm/image.sh) started by QEMU, reached by
ssh and through a forwarded port, provisioned as the Vagrantfile provisions it.

What Vagrant does, and how this does the same without Vagrant or a box download:

* **The VM.** QEMU without KVM (TCG: the CPU in software; it runs on any host, also where
  /dev/kvm cannot boot a stock kernel), ``-cpu max`` (so the guest sees AMD-V and can run
  chapter 02's VMs, nested), the Vagrantfile's default memory and CPUs.
* **The forwarded port.** QEMU's user network forwards a port of this machine's 127.0.0.1 to the
  guest's 8888, as the Vagrantfile's ``forwarded_port`` does (host_ip 127.0.0.1); another one to
  its ssh. Nothing else reaches the guest; the guest reaches the outside only through QEMU's
  user network (the package mirror and the package index, while provisioning).
* **The synced folder.** The repository shared over 9p, read-only, at /vagrant.
* **The provisioner.** Read from the Vagrantfile itself (:func:`provisioner`): the same script,
  uploaded to /tmp/vagrant-shell as Vagrant uploads it, run with the same arguments and
  environment by ``sudo -E -H bash -l`` over ssh as the ``vagrant`` user, Vagrant's own way.

Every boot's console is kept (console-N.log in the run's folder) and shown when a test fails.
"""
from __future__ import annotations

import ctypes
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
GUEST_PORT = 8888           # where the unit's JupyterLab listens in the guest (the Vagrantfile's GUEST_PORT)


@dataclass(frozen=True)
class Provisioner:
    """The Vagrantfile's shell provisioner: what it runs, with which arguments and environment."""

    path: str
    args: tuple[str, ...]
    env: dict[str, str]

    def command(self, uploaded: str = "/tmp/vagrant-shell") -> str:
        """The shell text Vagrant sends for it (to `sudo -E -H bash -l`): the environment
        exported, then the uploaded script with its arguments."""
        lines = [f"chmod +x {shlex.quote(uploaded)}"]
        lines += [f"export {k}={shlex.quote(v)}" for k, v in self.env.items()]
        lines.append(" ".join([shlex.quote(uploaded), *map(shlex.quote, self.args)]))
        return "\n".join(lines) + "\n"


def provisioner(host_port: int, vagrantfile: Path = REPO / "Vagrantfile") -> Provisioner:
    """The ``config.vm.provision "lab"`` line of the Vagrantfile, read rather than copied, so
    that the stage provisions as learners' VMs are provisioned even after it changes. Its
    values are string literals, except the forwarded port (``LAB_PORT.to_s``), which is the
    port this run forwards; anything else is refused by name."""
    text = vagrantfile.read_text()
    found = re.search(r'config\.vm\.provision\s+"lab",(.*?)(?:\n\s*\n|\n\s*config\.)', text, re.S)
    if not found:
        raise ValueError("no `config.vm.provision \"lab\", ...` in the Vagrantfile")
    block = found.group(1)

    def field(name: str) -> str | None:
        match = re.search(rf"\b{name}:\s*(\"[^\"]*\"|\[[^\]]*\]|\{{[^}}]*\}}|\w+)", block)
        return match.group(1) if match else None

    if field("type") != '"shell"':
        raise ValueError(f"the lab provisioner is not a shell provisioner (type: {field('type')})")
    if field("privileged") not in (None, "true"):
        raise ValueError("the lab provisioner is not privileged: this stage runs it with sudo, as Vagrant does by default")
    path = (field("path") or "").strip('"')
    args = tuple(re.findall(r'"([^"]*)"', field("args") or "[]"))
    if not args and (field("args") or "[]").replace(" ", "") != "[]":
        raise ValueError(f"the lab provisioner's args {field('args')}: only double-quoted strings are read")
    env = {}
    for key, value in re.findall(r'"(\w+)"\s*=>\s*([^,}]+)', field("env") or "{}"):
        value = value.strip()
        if value.startswith('"') and value.endswith('"'):
            env[key] = value[1:-1]
        elif value == "LAB_PORT.to_s":
            env[key] = str(host_port)
        else:
            raise ValueError(f"the lab provisioner's env {key} => {value}: this stage cannot evaluate that Ruby")
    if not path:
        raise ValueError("the lab provisioner has no path")
    return Provisioner(path, args, env)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _qemu_path(path: Path) -> str:
    """A path as a value in QEMU's comma-separated options (a comma is written twice)."""
    return str(path).replace(",", ",,")


def _die_with_parent() -> None:
    # In QEMU's process, before it starts: killed with the test run that started it, even when
    # that run is killed itself (a CI timeout), so no VM outlives its stage.
    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)   # PR_SET_PDEATHSIG


class PortTaken(RuntimeError):
    """QEMU could not forward a port: something took it after it was chosen."""


class VM:
    """One lab VM: a copy of the bare image in ``work``, booted as often as a test asks."""

    def __init__(self, image: Path, work: Path, memory_mib: int = 4096, cpus: int = 2):
        self.work = Path(work)
        self.memory_mib, self.cpus = memory_mib, cpus
        self.disk = self.work / "disk.img"
        self.qemu: subprocess.Popen | None = None
        self.boots = 0
        self._pick_ports()
        self.work.mkdir(parents=True, exist_ok=True)
        # The bare image stays in the cache for the next run; this run boots copies of it (a
        # sparse copy of the disk), so that another run's image.sh may replace the cache meanwhile.
        subprocess.run(["cp", "--sparse=always", "--reflink=auto", str(Path(image) / "disk.img"), str(self.disk)],
                       check=True)
        for name in ("vmlinuz", "initrd.img", "id_ed25519"):
            shutil.copy2(Path(image) / name, self.work / name)
        self.key = self.work / "id_ed25519"

    def _pick_ports(self) -> None:
        self.ssh_port = free_port()
        self.lab_port = free_port()
        while self.lab_port == self.ssh_port:
            self.lab_port = free_port()

    # ------------------------------------------------------------------------- power
    @property
    def console(self) -> Path:
        return self.work / f"console-{self.boots}.log"

    def boot(self, timeout: float = 300) -> float:
        """Power on and wait until ssh answers and /vagrant is mounted; return the seconds it took.
        A forwarded port taken by someone else between its choice and QEMU's start: new ports,
        up to three tries."""
        for _ in range(2):
            try:
                return self._boot(timeout)
            except PortTaken:
                self._pick_ports()
        return self._boot(timeout)

    def _boot(self, timeout: float) -> float:
        assert self.qemu is None or self.qemu.poll() is not None, "the VM is already running"
        self.boots += 1
        command = [
            "qemu-system-x86_64", "-accel", "tcg,thread=multi", "-cpu", "max",
            "-m", str(self.memory_mib), "-smp", str(self.cpus),
            "-display", "none", "-monitor", "none", "-serial", f"file:{_qemu_path(self.console)}",
            # A panic (panic=-1: reboot at once) ends QEMU instead of rebooting in a loop.
            "-no-reboot",
            "-kernel", str(self.work / "vmlinuz"), "-initrd", str(self.work / "initrd.img"),
            "-append", "root=/dev/vda rw console=ttyS0 panic=-1",
            "-drive", f"file={_qemu_path(self.disk)},format=raw,if=virtio",
            "-netdev", (f"user,id=net0,hostfwd=tcp:127.0.0.1:{self.ssh_port}-:22,"
                        f"hostfwd=tcp:127.0.0.1:{self.lab_port}-:{GUEST_PORT}"),
            "-device", "virtio-net-pci,netdev=net0",
            "-virtfs", f"local,path={_qemu_path(REPO)},mount_tag=vagrant,security_model=none,readonly=on",
        ]
        started = time.monotonic()
        errors = self.work / f"qemu-{self.boots}.log"
        with open(errors, "wb") as sink:
            self.qemu = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                         stderr=sink, start_new_session=True, preexec_fn=_die_with_parent)
        while time.monotonic() - started < timeout:
            if self.qemu.poll() is not None:
                said = errors.read_text(errors="replace")[-2000:]
                if "hostfwd" in said or "host forwarding" in said:
                    raise PortTaken(said)
                raise RuntimeError(f"QEMU exited with {self.qemu.returncode} during the boot:\n{said}")
            # ssh answers, and the synced folder is mounted (fstab's nofail lets ssh come first).
            if self.ssh("mountpoint -q /vagrant", timeout=20, check=False).returncode == 0:
                return time.monotonic() - started
            time.sleep(2)
        raise TimeoutError(f"no ssh, or no /vagrant, within {timeout:.0f} s of power on")

    def power_cut(self) -> None:
        """Pull the plug: QEMU killed, nothing shut down, nothing synced that was not already."""
        if self.qemu and self.qemu.poll() is None:
            os.killpg(self.qemu.pid, signal.SIGKILL)
            self.qemu.wait(timeout=30)

    def close(self) -> None:
        """Power off (a clean shutdown if it can, else the plug) and delete the run's disk."""
        if self.qemu and self.qemu.poll() is None:
            self.ssh("sudo systemctl poweroff", timeout=20, check=False)
            try:
                self.qemu.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.power_cut()
        self.disk.unlink(missing_ok=True)

    # ------------------------------------------------------------------------- talking to it
    def ssh(self, command: str, *, input: str | None = None, timeout: float = 600,
            check: bool = True) -> subprocess.CompletedProcess:
        """Run a shell command in the guest as the `vagrant` user (as `vagrant ssh -c` does)."""
        args = ["ssh", "-q", "-i", str(self.key), "-p", str(self.ssh_port),
                "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
                "-o", "ConnectTimeout=10", "-o", "ServerAliveInterval=15",
                "vagrant@127.0.0.1", command]
        try:
            done = subprocess.run(args, input=input, capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired as exc:
            if check:
                raise
            return subprocess.CompletedProcess(args, 124, exc.stdout or "", exc.stderr or "")
        if check and done.returncode != 0:
            raise RuntimeError(f"in the guest, `{command}` exited with {done.returncode}:\n"
                               f"{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
        return done

    def sudo(self, command: str, **kwargs) -> subprocess.CompletedProcess:
        return self.ssh(f"sudo -H bash -c {shlex.quote(command)}", **kwargs)

    def provision(self, how: Provisioner, timeout: float = 1800) -> subprocess.CompletedProcess:
        """`vagrant provision`: upload the script, then run it as Vagrant runs a shell provisioner."""
        self.ssh("cat > /tmp/vagrant-shell", input=(REPO / how.path).read_text(), timeout=60)
        return self.ssh("sudo -E -H bash -l", input=how.command(), timeout=timeout, check=False)

    def console_tail(self, lines: int = 80) -> str:
        try:
            text = self.console.read_text(errors="replace")
        except OSError:
            return "(no console)"
        # QEMU's serial console has terminal escapes and carriage returns: plain lines only.
        text = re.sub(r"\x1b\[[0-9;?]*[a-zA-Z]|\x1bc|\r", "", text)
        return "\n".join(text.splitlines()[-lines:])
