# The two commands of the README:
#   make lab    set everything up, then start JupyterLab on 127.0.0.1:8888 with a random token
#   make test   set everything up, then run unit, system and notebook tests
# Both are idempotent: a second run only checks, then goes straight to its work.

SHELL := /bin/bash
# The system Python (Debian 12: 3.11, Ubuntu 24.04: 3.12), not a pyenv shim: learners have it.
PYTHON ?= $(shell command -v /usr/bin/python3 || command -v python3)
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
SUDO := $(shell [ "$$(id -u)" -eq 0 ] || echo sudo)
PORT ?= 8888
PYTEST_FLAGS ?=

.PHONY: lab test provision venv test-unit test-system test-notebooks test-ui test-guest test-labvm clean-venv

# The test targets also install the test-only tools (chromium, shellcheck, vagrant, ...);
# `make lab` installs only what the course needs. A target-specific variable reaches the
# prerequisites too, so `provision` sees it when a test target pulls it in.
PROVISION_FLAGS ?=
test test-unit test-system test-notebooks test-ui test-guest test-labvm: PROVISION_FLAGS = --with-test-tools

provision:
	@$(SUDO) scripts/provision.sh $(PROVISION_FLAGS)

# The venv is rebuilt only when pyproject.toml changes.
$(STAMP): pyproject.toml | provision
	@[ -x $(PY) ] || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	@touch $@

venv: provision $(STAMP)

lab: venv
	@LABHELPER_PORT=$(PORT) $(PY) scripts/lab.py

# Tests change kernel state, so this machine is declared disposable for their duration only.
# The last stage runs the cgroup and KVM tests again in a QEMU guest with pure cgroup v2 and
# kvm_amd, the learners' kind of kernel (tests/guest; about 2 minutes).
test: export LABHELPER_DISPOSABLE = 1
test: venv
	@# Chapter 08 boots a real kernel (the lab VM's own from /boot, else this one), and the
	@# guest stage one with pure cgroup v2 and its modules: the distribution's kernel package,
	@# fetched once into a cache (exit 77: no package registry; chapter 08 then says so).
	@scripts/fetch-kernel.sh >/dev/null || echo "no kernel fetched (exit $$?): chapter 08 skips its boot"
	$(PY) -m pytest $(PYTEST_FLAGS) tests/unit tests/system
	$(PY) -m pytest $(PYTEST_FLAGS) --nbval --nbval-current-env \
	    --nbval-sanitize-with tests/nbval_sanitize.cfg notebooks/
	$(PY) -m pytest $(PYTEST_FLAGS) tests/ui
	$(PY) -m pytest $(PYTEST_FLAGS) tests/guest

test-unit: venv
	$(PY) -m pytest $(PYTEST_FLAGS) tests/unit

test-system: export LABHELPER_DISPOSABLE = 1
test-system: venv
	$(PY) -m pytest $(PYTEST_FLAGS) tests/system

test-notebooks: export LABHELPER_DISPOSABLE = 1
test-notebooks: venv
	$(PY) -m pytest $(PYTEST_FLAGS) --nbval --nbval-current-env \
	    --nbval-sanitize-with tests/nbval_sanitize.cfg notebooks/

# Every chapter in a real browser (Debian's chromium), screenshots in tests/ui/screenshots/.
test-ui: export LABHELPER_DISPOSABLE = 1
test-ui: venv
	$(PY) -m pytest $(PYTEST_FLAGS) tests/ui

# The cgroup and KVM tests in a pure cgroup v2 + kvm_amd guest (QEMU), and its console in
# tests/guest/last-run.log.
test-guest: export LABHELPER_DISPOSABLE = 1
test-guest: venv
	$(PY) -m pytest $(PYTEST_FLAGS) tests/guest

# The lab VM booted for real (tests/labvm), as a learner's `vagrant up` makes it: a bare image of
# this machine's distribution made with debootstrap (cached in /var/cache/labhelper-labvm),
# booted by QEMU, provisioned by scripts/provision.sh exactly as the Vagrantfile runs it, under
# systemd; chapters 00 and 05 run in Chromium through the forwarded port, chapter 08's boot under
# KVM inside it, the systemd-only system tests (marked labvm); a power cut; provisioned again.
# `.ci/run` runs it after `make test`; its consoles end up in tests/labvm/last-run.log.
test-labvm: venv
	$(PY) -m pytest $(PYTEST_FLAGS) --durations=0 tests/labvm

clean-venv:
	rm -rf $(VENV)
