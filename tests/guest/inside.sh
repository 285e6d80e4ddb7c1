#!/usr/bin/env bash
# Runs inside the guest (tests/guest/boot.sh): the tests that need cgroups or KVM, the notebooks
# that touch them, and a last census, on a pure cgroup v2 kernel with kvm_amd.
#
# One boot, and one pytest start for the tests and one for nbval: each start costs about 45 s
# of emulated Python. Time bounds in tests stretch by LABHELPER_TIME_FACTOR (tests/timing.py);
# no test here judges speed. LABHELPER_EXPECT=all: nothing may skip but what does not apply.
set -u
cd "$(dirname "$0")/../.." || exit 1
export LABHELPER_DISPOSABLE=1 LABHELPER_EXPECT=all PYTHONDONTWRITEBYTECODE=1
export LABHELPER_TIME_FACTOR=${LABHELPER_TIME_FACTOR:-20}
PY=.venv/bin/python
rc=0
echo "== the doctor, in the guest"
$PY -m labhelper doctor || rc=1
echo "== tests that need cgroups or KVM"
$PY -m pytest -p no:cacheprovider -q -ra --durations=12 -m "(kvm or cgroups or guest) and not hostonly" \
    tests/system tests/guest/test_in_guest.py tests/unit/test_host.py || rc=1
echo "== the notebooks that use them, under nbval"
$PY -m pytest -p no:cacheprovider -q --nbval --nbval-current-env \
    --nbval-sanitize-with tests/nbval_sanitize.cfg notebooks/00-start-here.ipynb notebooks/02-hypervisors.ipynb \
    notebooks/03-namespaces.ipynb notebooks/05-cgroups.ipynb notebooks/07-a-container-by-hand.ipynb || rc=1
echo "== the census: nothing of the lab's may be left"
left=$($PY -m labhelper census)
echo "$left"
[ "$left" = "nothing of ours exists" ] || rc=1
exit $rc
