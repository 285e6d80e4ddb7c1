"""`make lab`: start JupyterLab on 127.0.0.1 with a fresh random token and print the URL.

Loopback only: the notebook kernel runs as root, so the server must not be reachable from the
network. (The Vagrant VM forwards the port to the host's loopback; see the Vagrantfile.)
"""
import os
import secrets
import socket
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
port = int(os.environ.get("LABHELPER_PORT", "8888"))

with socket.socket() as s:
    try:
        s.bind(("127.0.0.1", port))
    except OSError:
        sys.exit(f"make lab: port {port} on 127.0.0.1 is in use (another JupyterLab?). "
                 f"Stop it, or choose another port: make lab PORT=8899")

if not (os.environ.get("LABHELPER_DISPOSABLE") == "1" or Path("/etc/labhelper/disposable").exists()):
    print("note: this machine is not declared disposable, so chapters will explain instead of changing the "
          "kernel. On a throw-away machine: sudo mkdir -p /etc/labhelper && sudo touch /etc/labhelper/disposable")

# JupyterLab's settings overrides, as in the lab VM (scripts/provision.sh): no news toast and no
# update check, which would both reach out to the internet.
overrides = Path(sys.prefix, "share", "jupyter", "lab", "settings", "overrides.json")
wanted = (ROOT / "scripts" / "jupyterlab-overrides.json").read_text()
try:
    if not overrides.exists() or overrides.read_text() != wanted:
        overrides.parent.mkdir(parents=True, exist_ok=True)
        overrides.write_text(wanted)
except OSError as exc:  # a venv made by root (`sudo make test`), `make lab` as a user: not fatal
    print(f"note: could not write {overrides} ({exc.strerror}): JupyterLab may offer to fetch its news")

token = secrets.token_hex(24)
url = f"http://127.0.0.1:{port}/lab/tree/00-start-here.ipynb?token={token}"
print(f"\n  JupyterLab is starting. Open:\n\n    {url}\n\n  Stop it with Ctrl-C.\n", flush=True)
jupyter = Path(sys.executable).with_name("jupyter")
# Trust the course's own chapters (and nothing else in the folder), as this user, in this
# environment: the server started below reads the same signatures, so the committed diagrams
# show when a chapter is opened, before any cell runs. A notebook the learner saves is signed
# by JupyterLab itself.
from labhelper.teach.chapters import trust  # noqa: E402  (the venv's labhelper)

try:
    trust(ROOT / "notebooks", jupyter=jupyter)
except Exception as exc:  # noqa: BLE001 - not fatal: the diagrams then appear once cells run
    print(f"note: could not trust the course's notebooks ({exc}); their diagrams appear once their cells run")
args = [str(jupyter), "lab", "--no-browser", "--ip=127.0.0.1", f"--port={port}",
        f"--ServerApp.root_dir={ROOT / 'notebooks'}", f"--IdentityProvider.token={token}",
        "--ServerApp.port_retries=0"]
if os.geteuid() == 0:
    args.append("--allow-root")
# Through the lab's cgroup delegation step (chapter 05): at the root of the cgroup hierarchy (no
# systemd) it changes nothing; in a scope systemd delegated (systemd-run --scope -p Delegate=yes)
# it makes that scope the lab's place; anywhere else it says so and JupyterLab starts anyway.
os.execv(sys.executable, [sys.executable, "-m", "labhelper.cgroups.delegate", "--", *args])
