#!/usr/bin/env bash
# One provisioning script for every place the course runs: `make lab` / `make test` on a
# disposable Debian or Ubuntu machine, CI, the Vagrant lab VM, and cloud VMs (as cloud-init).
#
#   scripts/provision.sh                    install the system packages the course needs
#   scripts/provision.sh --check            say which are missing; change nothing (exit 1 if any)
#   scripts/provision.sh --with-test-tools  also the tools `make test` needs (browser, linters, vagrant)
#   scripts/provision.sh --lab-vm           also make this machine the lab VM: mark it disposable,
#                                           install labhelper into /opt/labhelper/venv, give the
#                                           learner a copy of the chapters in
#                                           /var/lib/labhelper-notebooks, run JupyterLab as a service
#   scripts/provision.sh --url              print the lab's URL (with its token) and the service state
#
# Options combine (`--check --with-test-tools`). Every mode is idempotent: a second run changes
# nothing and says so. The system packages are listed here and nowhere else.
#
# Environment (all optional):
#   LABHELPER_SRC        the course repository to install in --lab-vm mode (default: the repository
#                        this script is in, or /vagrant, where Vagrant syncs it)
#   LABHELPER_HOST_PORT  the port the learner's browser uses, for the printed URL (default 8888)
#   LABHELPER_LISTEN     the address JupyterLab listens on in --lab-vm mode (default 0.0.0.0, which
#                        Vagrant's port forward needs; use 127.0.0.1 on a cloud VM and an ssh tunnel)
#   LABHELPER_OS_RELEASE the os-release file to read (default /etc/os-release; tests point it elsewhere)
#   LABHELPER_ROOT       write --lab-vm's files under this directory instead of / and touch no
#                        service (tests use it; default /)
#   LABHELPER_SYSTEMCTL  a stand-in for systemctl that --lab-vm then drives, even with
#                        LABHELPER_ROOT (tests use it to check the service steps)
set -euo pipefail

# What each package is for (the chapter that needs it):
PACKAGES=(
  python3 python3-venv               # the venv that holds labhelper and JupyterLab (its pip
                                     # comes from ensurepip, in python3-venv: no python3-pip)
  make                               # the two commands of the README
  graphviz                           # dot: every diagram of the course
  strace                             # chapter 01: tracing system calls
  ruby                               # chapter 01: the seed's own example, File.open traced to openat
  gcc libc6-dev binutils             # chapters 01-02: C references for benchmarks; GNU as for guests
  iproute2 iputils-ping              # chapter 04: ip netns, veth, ping between namespaces
  nftables                           # chapter 04: the lab networks' firewall (nft), R16
  busybox-static                     # chapters 06-07: a root filesystem in one binary
  umoci skopeo                       # chapter 06: real OCI tools read the lab's images
  runc crun                          # chapters 06-08: real runtimes run the lab's images; 07's benchmark
  qemu-system-x86                    # chapter 08: a real kernel booted in a VM (KVM in the lab VM)
  util-linux procps kmod psmisc      # nsenter, unshare, lsns, ps, lsmod: to look from the outside
)

# Only what `make test` needs on top (never installed in the lab VM):
TEST_PACKAGES=(
  chromium                           # tests/ui: the real browser Playwright drives (no browser download)
  fonts-dejavu-core                  # tests/ui: readable screenshots
  shellcheck                         # tests/unit/test_delivery.py: the scripts are lint-clean
  vagrant vagrant-libvirt            # tests/unit/test_delivery.py: `vagrant validate` on the Vagrantfile
  systemd                            # tests/unit/test_delivery.py: `systemd-analyze verify` on the unit
  cpio xz-utils zstd                 # tests/guest: a pure cgroup v2 + kvm_amd guest (QEMU, busybox: above)
  debootstrap openssh-client         # tests/labvm: the lab VM's bare image, and ssh into it
)

usage() { sed -n '2,/^set -euo/{/^set -euo/!p}' "$0" | sed 's/^# \{0,1\}//'; }

check=0 test_tools=0 lab_vm=0 url_only=0
for arg in "$@"; do
  case "$arg" in
    --check) check=1 ;;
    --with-test-tools) test_tools=1 ;;
    --lab-vm) lab_vm=1 ;;
    --url) url_only=1 ;;
    -h|--help) usage; exit 0 ;;
    *) echo "provision.sh: unknown option '$arg' (try --help)" >&2; exit 2 ;;
  esac
done

# Where --lab-vm puts things. The token is a secret: root-only, generated once, kept across
# re-provisioning so that a bookmarked URL keeps working.
ROOT=${LABHELPER_ROOT:-/}
ROOT=${ROOT%/}
ETC_DIR=$ROOT/etc/labhelper
TOKEN_FILE=$ETC_DIR/jupyter-token
VENV=$ROOT/opt/labhelper/venv
# The learner's notebooks: a copy of the repository's notebooks/ on the VM's own disk, which no
# synced folder overwrites (libvirt's rsync would) and which `vagrant up` does not wait for. Not
# under /var/lib/labhelper: that folder belongs to the chapters' kernel objects, which
# `labhelper census` lists and `labhelper cleanup` removes.
NOTEBOOKS=$ROOT/var/lib/labhelper-notebooks
UNIT_NAME=labhelper-jupyter.service
UNIT_FILE=$ROOT/etc/systemd/system/$UNIT_NAME
HOST_PORT=${LABHELPER_HOST_PORT:-8888}
LISTEN=${LABHELPER_LISTEN:-0.0.0.0}
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
SYSTEMCTL=${LABHELPER_SYSTEMCTL:-systemctl}

print_url() {
  if [ ! -e "$TOKEN_FILE" ]; then
    echo "provision.sh: no token yet ($TOKEN_FILE): run 'sudo $0 --lab-vm' (or 'vagrant provision')" >&2
    return 1
  fi
  if [ ! -r "$TOKEN_FILE" ]; then
    echo "provision.sh: the token ($TOKEN_FILE) is readable by root only: run 'sudo $0 --url'" >&2
    return 4
  fi
  local state="not checked"
  if [ -z "$ROOT" ] && [ -d /run/systemd/system ]; then
    state=$(systemctl is-active "$UNIT_NAME" 2>/dev/null || true)
    # The service needs a few seconds to listen after a (re)start: wait for it, briefly.
    for _ in $(seq 1 30); do
      (exec 3<>"/dev/tcp/127.0.0.1/8888") 2>/dev/null && break
      sleep 1
    done
  fi
  echo "=================================================================================="
  echo " The lab is ready (JupyterLab service: $state). Open this URL in your browser:"
  echo
  echo "     http://127.0.0.1:$HOST_PORT/lab/tree/00-start-here.ipynb?token=$(cat "$TOKEN_FILE")"
  echo
  echo " It answers on this computer only. Lost it? 'vagrant provision' prints it again."
  echo " Your notebooks are kept in the VM, in ${NOTEBOOKS#"$ROOT"}/ (see README.md)."
  echo "=================================================================================="
}

if [ "$url_only" = 1 ]; then
  print_url
  exit $?
fi

# Only Debian and Ubuntu are supported: say so clearly instead of failing half-way.
OS_RELEASE=${LABHELPER_OS_RELEASE:-/etc/os-release}
ID="" ID_LIKE="" PRETTY_NAME=""
if [ -r "$OS_RELEASE" ]; then
  # shellcheck disable=SC1090
  . "$OS_RELEASE"
fi
case " ${ID:-} ${ID_LIKE:-} " in
  *" debian "*|*" ubuntu "*) ;;
  *)
    echo "provision.sh: this is '${PRETTY_NAME:-an unknown system (no $OS_RELEASE)}'. The course is" >&2
    echo "provisioned on Debian 12 or Ubuntu 24.04 only (its packages are apt packages)." >&2
    echo "Use the lab VM instead: install Vagrant and a hypervisor, then run 'vagrant up'." >&2
    exit 3 ;;
esac

wanted=("${PACKAGES[@]}")
[ "$test_tools" = 1 ] && wanted+=("${TEST_PACKAGES[@]}")

missing=()
for pkg in "${wanted[@]}"; do
  status=$(dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null || true)
  [ "$status" = "install ok installed" ] || missing+=("$pkg")
done

if [ "$check" = 1 ]; then
  if [ "${#missing[@]}" -eq 0 ]; then
    echo "provision.sh: all ${#wanted[@]} system packages are installed"
    exit 0
  fi
  echo "provision.sh: missing system packages: ${missing[*]}"
  exit 1
fi

if [ "$(id -u)" -ne 0 ]; then
  if [ "${#missing[@]}" -gt 0 ]; then
    echo "provision.sh: installing ${missing[*]} needs root: run 'sudo $0 $*'" >&2
    exit 4
  elif [ "$lab_vm" = 1 ] && [ -z "$ROOT" ]; then
    echo "provision.sh: --lab-vm writes to /etc and /opt: run 'sudo $0 $*'" >&2
    exit 4
  fi
fi

# apt waits up to 10 minutes for a lock that another apt holds: on a fresh VM's first boot,
# unattended-upgrades and apt-daily run at the same time as this script.
APT_LOCK_WAIT=600
apt_get() { apt-get -o DPkg::Lock::Timeout="$APT_LOCK_WAIT" "$@"; }

# DPkg::Lock::Timeout covers dpkg's lock (install), not the package lists' lock that
# `apt-get update` takes (apt 2.6 and 2.7 fail at once on it): wait for that one here.
update_package_lists() {
  local waited=0 output
  until output=$(LC_ALL=C apt_get update -qq 2>&1); do
    if [[ "$output" != *"Could not get lock"* ]] || [ "$waited" -ge "$APT_LOCK_WAIT" ]; then
      printf '%s\n' "$output" >&2
      return 1
    fi
    [ "$waited" -gt 0 ] || echo "provision.sh: another apt (unattended-upgrades, on a first boot?)" \
      "holds the package lists: waiting for it, up to $APT_LOCK_WAIT s"
    sleep 5
    waited=$((waited + 5))
  done
  [ -z "$output" ] || printf '%s\n' "$output"
}

if [ "${#missing[@]}" -eq 0 ]; then
  echo "provision.sh: all ${#wanted[@]} system packages are installed"
else
  export DEBIAN_FRONTEND=noninteractive
  update_package_lists
  # A test tool that this release does not package (Ubuntu ships chromium only as a snap) is
  # left out with a note: the tests that need it skip and name it.
  installable=()
  for pkg in "${missing[@]}"; do
    if apt-cache show "$pkg" >/dev/null 2>&1; then
      installable+=("$pkg")
    elif [[ " ${PACKAGES[*]} " == *" $pkg "* ]]; then
      echo "provision.sh: '$pkg' is not available from apt here; is this Debian 12 or Ubuntu 24.04?" >&2
      exit 5
    else
      echo "provision.sh: note: '$pkg' is not packaged for ${PRETTY_NAME:-this system}; the tests that need it will skip"
    fi
  done
  if [ "${#installable[@]}" -gt 0 ]; then
    echo "provision.sh: installing ${installable[*]}"
    apt_get install -y -qq --no-install-recommends "${installable[@]}"
  fi
fi

[ "$lab_vm" = 1 ] || exit 0

# ---------------------------------------------------------------------------------------------
# --lab-vm: this machine becomes a learner's lab. Each step checks before it changes anything.

if [ -n "${LABHELPER_SRC:-}" ]; then
  SRC=$LABHELPER_SRC
elif [ -f "$HERE/../pyproject.toml" ]; then
  SRC=$(cd "$HERE/.." && pwd)
else
  SRC=/vagrant     # Vagrant uploads this script to /tmp and syncs the repository here
fi
if ! [[ "$LISTEN" =~ ^[0-9]{1,3}(\.[0-9]{1,3}){3}$ ]]; then
  echo "provision.sh: LABHELPER_LISTEN='$LISTEN' is not an IPv4 address (0.0.0.0 or 127.0.0.1)" >&2
  exit 2
fi
if [ ! -f "$SRC/pyproject.toml" ] || [ ! -f "$SRC/scripts/$UNIT_NAME" ] || [ ! -d "$SRC/labhelper" ] \
   || [ ! -d "$SRC/notebooks" ]; then
  echo "provision.sh: the course repository is not at '$SRC' (no pyproject.toml, labhelper/," >&2
  echo "notebooks/ or scripts/$UNIT_NAME there): set LABHELPER_SRC to it. In Vagrant, is /vagrant synced?" >&2
  exit 6
fi

changed() { echo "provision.sh: $*"; }

# 1. The safety marker: labhelper changes kernel state only on a machine declared disposable.
mkdir -p "$ETC_DIR"
chmod 0755 "$ETC_DIR"
if [ ! -f "$ETC_DIR/disposable" ]; then
  printf '%s\n' "This machine is a disposable lab VM: labhelper may change kernel state here." \
    "Written by scripts/provision.sh --lab-vm." > "$ETC_DIR/disposable"
  changed "marked this machine disposable ($ETC_DIR/disposable)"
fi

# 2. The venv. labhelper is installed into it as a copy (not `pip install -e`): the service
#    then needs nothing from $SRC, which in Vagrant is a synced folder mounted late in the boot
#    (or not at all, if the host side is gone). The dependencies are installed again only when
#    pyproject.toml or the system Python changes; labhelper alone when its source changes, so
#    `vagrant provision` after a `git pull` brings the new labhelper in.
deps_want="$(sha256sum < "$SRC/pyproject.toml" | cut -c1-64) $(/usr/bin/python3 --version 2>&1)"
deps_have=$(cat "$VENV/.installed" 2>/dev/null || true)
# Every file pip would install (pyproject.toml says what and how), in a stable order.
source_want=$(cd "$SRC" && find pyproject.toml labhelper -name __pycache__ -prune -o -type f ! -name '*.pyc' -print0 \
                | LC_ALL=C sort -z | xargs -0 sha256sum | sha256sum | cut -c1-64)
source_have=$(cat "$VENV/.labhelper-source" 2>/dev/null || true)
venv_changed=0
if [ "$deps_have" != "$deps_want" ] || [ "$source_have" != "$source_want" ]; then
  # pip builds in the folder it installs from: a scratch copy keeps build/ and *.egg-info out of
  # $SRC (the learner's repository, on the host). README.md is pyproject.toml's `readme`.
  stage=$(mktemp -d -t labhelper-src.XXXXXX)
  trap 'rm -rf "$stage"' EXIT
  cp -R "$SRC/pyproject.toml" "$SRC/README.md" "$SRC/labhelper" "$stage/"
  find "$stage" -name __pycache__ -prune -exec rm -rf {} +
  if [ "$deps_have" != "$deps_want" ]; then
    changed "building $VENV from $SRC (a few minutes the first time)"
    [ -x "$VENV/bin/python" ] || /usr/bin/python3 -m venv "$VENV"
    "$VENV/bin/python" -m pip install -q --upgrade pip
    "$VENV/bin/python" -m pip install -q "$stage"
    echo "$deps_want" > "$VENV/.installed"
  else
    changed "installing labhelper from $SRC into $VENV (its source changed)"
    "$VENV/bin/python" -m pip install -q --no-deps --force-reinstall "$stage"
  fi
  echo "$source_want" > "$VENV/.labhelper-source"
  rm -rf "$stage"
  trap - EXIT
  venv_changed=1
else
  echo "provision.sh: $VENV is up to date"
fi

# 2b. JupyterLab's settings for the served lab, as overrides of its defaults: no "Would you like
#    to get notified about official Jupyter news?" and no update check. Both would reach out to
#    the internet from the learner's VM; the course needs neither.
OVERRIDES=$VENV/share/jupyter/lab/settings/overrides.json
if [ ! -f "$SRC/scripts/jupyterlab-overrides.json" ]; then
  # A synced folder older than this script (libvirt's rsync copies only at `vagrant up`/`reload`).
  echo "provision.sh: note: $SRC/scripts/jupyterlab-overrides.json is missing: run 'vagrant rsync'" \
    "(or 'vagrant reload'), then 'vagrant provision'; JupyterLab keeps its news settings until then" >&2
elif ! cmp -s "$SRC/scripts/jupyterlab-overrides.json" "$OVERRIDES"; then
  install -D -m 0644 "$SRC/scripts/jupyterlab-overrides.json" "$OVERRIDES"
  changed "wrote $OVERRIDES (no news, no update checks)"
  venv_changed=1     # the server reads them when it starts
fi

# 3. The token, once. 24 random bytes as hex; no newline (JupyterLab reads the file verbatim).
if [ ! -s "$TOKEN_FILE" ]; then
  (umask 077; head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n' > "$TOKEN_FILE")
  changed "generated the JupyterLab token ($TOKEN_FILE, root only)"
fi
chmod 0600 "$TOKEN_FILE"

# 4. The learner's notebooks: every file of $SRC/notebooks that is not in $NOTEBOOKS yet is
#    copied there; nothing there is ever overwritten or removed. So a new chapter (after a
#    `git pull`) appears at the next provisioning, the learner's edits stay, and a chapter the
#    learner deleted comes back as the original: that is how to start a chapter over.
#    (Not `cp -rn`: coreutils 9.2 to 9.4, Ubuntu 24.04's, make it fail when it skips a file.)
mkdir -p "$NOTEBOOKS"
chmod 0755 "$NOTEBOOKS"
added=()
while IFS= read -r -d '' rel; do
  rel=${rel#./}
  if [ -e "$NOTEBOOKS/$rel" ] || [ -L "$NOTEBOOKS/$rel" ]; then
    continue  # the learner's, whatever it holds now
  fi
  if install -D -m 0644 "$SRC/notebooks/$rel" "$NOTEBOOKS/$rel"; then
    added+=("$rel")
  else
    echo "provision.sh: could not add $rel to $NOTEBOOKS (a file of yours in the way?)" >&2
  fi
done < <(cd "$SRC/notebooks" && find . \( -name .ipynb_checkpoints -o -name __pycache__ \) -prune \
           -o -type f -print0 | LC_ALL=C sort -z)
if [ "${#added[@]}" -gt 0 ]; then
  changed "added to $NOTEBOOKS: ${added[*]}"
else
  echo "provision.sh: $NOTEBOOKS has every chapter (files there are yours: never overwritten)"
fi

# 4b. Trust: JupyterLab shows a notebook's committed outputs (the diagrams, as SVG) only if the
#    notebook is signed by this server's user. Sign the course's own chapters, and only them:
#    the files of $NOTEBOOKS whose bytes are still the course's ($SRC/notebooks), as root with
#    HOME=/root, the service's user and data folder. A chapter the learner saved from JupyterLab
#    is signed by JupyterLab; one changed elsewhere, or any other file, is left as it is.
if [ -x "$VENV/bin/jupyter" ]; then
  originals=()
  while IFS= read -r -d '' rel; do
    rel=${rel#./}
    if [ -f "$NOTEBOOKS/$rel" ] && [ ! -L "$NOTEBOOKS/$rel" ] && cmp -s "$SRC/notebooks/$rel" "$NOTEBOOKS/$rel"; then
      originals+=("$NOTEBOOKS/$rel")
    fi
  done < <(cd "$SRC/notebooks" && find . -maxdepth 1 -type f -name '[0-9][0-9]-*.ipynb' -print0 | LC_ALL=C sort -z)
  if [ "${#originals[@]}" -gt 0 ]; then
    if env -u JUPYTER_DATA_DIR -u XDG_DATA_HOME HOME="$ROOT/root" "$VENV/bin/jupyter" trust "${originals[@]}" >/dev/null; then
      echo "provision.sh: the course's ${#originals[@]} unchanged chapters are trusted (their diagrams show before anything runs)"
    else
      echo "provision.sh: could not trust the chapters: their diagrams appear once their cells run" >&2
    fi
  fi
fi

# 4c. The kernel modules the chapters use, loaded at every boot (systemd-modules-load). overlay
#    (chapters 06-07) would also load by itself at the first overlay mount; loaded at boot, it is
#    there when the doctor looks and when a chapter's first mount is traced. The others the
#    chapters use load on demand (veth, bridge, nf_tables by netlink; loop on /dev/loop-control;
#    kvm_intel or kvm_amd by udev, from the CPU's flags).
MODULES_CONF=$ROOT/etc/modules-load.d/labhelper.conf
modules_text="# The course's kernel modules, loaded at boot. Written by scripts/provision.sh --lab-vm.
overlay"
if [ "$(cat "$MODULES_CONF" 2>/dev/null || true)" != "$modules_text" ]; then
  mkdir -p "$(dirname "$MODULES_CONF")"
  printf '%s\n' "$modules_text" > "$MODULES_CONF"
  changed "wrote $MODULES_CONF (overlay, at every boot)"
fi
if [ -z "$ROOT" ] && ! grep -qw overlay /proc/filesystems 2>/dev/null; then
  if modprobe overlay 2>/dev/null; then
    changed "loaded the overlay module"
  else
    echo "provision.sh: could not load the overlay module now; chapters 06-07 will say so" >&2
  fi
fi

# 5. The unit. Its paths are fixed (all on the VM's disk); only the listening address varies,
#    and it was checked above to be an IPv4 address, so the text replacement is safe.
mkdir -p "$(dirname "$UNIT_FILE")"
unit_text=$(<"$SRC/scripts/$UNIT_NAME")
unit_text=${unit_text//"--ServerApp.ip=0.0.0.0"/"--ServerApp.ip=$LISTEN"}
if [ "$(cat "$UNIT_FILE" 2>/dev/null || true)" != "$unit_text" ]; then
  printf '%s\n' "$unit_text" > "$UNIT_FILE"
  unit_changed=1
  changed "installed $UNIT_FILE"
else
  unit_changed=0
fi

# 6. The service: enabled at boot, (re)started only if something changed or it is not running.
if [ -n "$ROOT" ] && [ -z "${LABHELPER_SYSTEMCTL:-}" ]; then
  echo "provision.sh: LABHELPER_ROOT=$ROOT: files written there; no service touched"
elif [ -z "${LABHELPER_SYSTEMCTL:-}" ] && [ ! -d /run/systemd/system ]; then
  echo "provision.sh: systemd is not running here: the service is installed, not started." >&2
  echo "Start JupyterLab by hand with 'make lab' instead." >&2
else
  [ "$unit_changed" = 1 ] && "$SYSTEMCTL" daemon-reload
  "$SYSTEMCTL" enable --quiet "$UNIT_NAME"
  # A unit that failed 5 times within 60 s (StartLimitBurst) refuses every start, `restart`
  # included, until its failed state is reset: clear it, or this script would stop here.
  # Nothing to reset is fine too.
  "$SYSTEMCTL" reset-failed "$UNIT_NAME" 2>/dev/null || true
  if [ "$unit_changed" = 1 ] || [ "$venv_changed" = 1 ]; then
    "$SYSTEMCTL" restart "$UNIT_NAME"
    changed "(re)started $UNIT_NAME"
  elif ! "$SYSTEMCTL" is-active --quiet "$UNIT_NAME"; then
    "$SYSTEMCTL" start "$UNIT_NAME"
    changed "started $UNIT_NAME"
  else
    echo "provision.sh: $UNIT_NAME is running"
  fi
fi

print_url
