#!/bin/bash
# Run the suite, or the part that pytest's arguments name, as on an AVX2-only CPU, on an x86-64 machine with
# AVX-512 (by hand: CI runs tests/test_emulated.py instead, and the whole suite natively on either CPU).
#
#   tests/emulate_avx2.sh flags    -m "not tensorflow and not browser"   # native speed, a few minutes
#   tests/emulate_avx2.sh emulated -m tensorflow                          # half an hour and more
#
# flags:    the tuner reads a /proc/cpuinfo whose AVX-512, AMX and AVX-VNNI flags are taken out (its signature,
#           the ISA caps it searches, bf16), and everything runs natively.
# emulated: as flags, and every interpreter started as sys.executable (trial workers, `python -m tuner.cli`)
#           runs under qemu-user as an AMD EPYC-Rome, so that TensorFlow reads that CPU and chooses as there
#           (oneDNN off by default, its kernels for AVX2). Needs qemu-user 7.2 or later.
# Emulation's own faults, which say nothing about an AVX2 CPU: a ResNet-50 burst and the 4096x4096 matmul
# yardstick run past their 600 s limit; threads are named qemu-x86_64, not python (the thread-count test);
# intel-tensorflow dies with SIGSEGV once KMP_BLOCKTIME is set (leave $TUNER_ENVS unwrapped: it runs natively).
set -euo pipefail
mode=${1:-}
case "$mode" in flags | emulated) shift ;; *) echo "usage: $0 flags|emulated [pytest arguments]" >&2; exit 2 ;; esac
root=$(cd "$(dirname "$0")/.." && pwd)
python=${PYTHON:-$root/.venv/bin/python}
grep -qw avx512f /proc/cpuinfo || { echo "$0: this CPU has no AVX-512: run the suite as it is" >&2; exit 2; }
sim=$(mktemp -d "${TMPDIR:-/tmp}/tuner-avx2-XXXXXX")
trap 'rm -rf "$sim"' EXIT
sed -E '/^flags/ s/ (avx512[a-z0-9_]*|amx_[a-z0-9_]*|avx_vnni[a-z0-9_]*)\b//g' /proc/cpuinfo >"$sim/cpuinfo"
mkdir "$sim/site"
cat >"$sim/site/sitecustomize.py" <<EOF
import sys
from pathlib import Path

if "$mode" == "emulated":
    sys.executable = "$sim/python"
try:
    import tuner.signature

    tuner.signature.cpu_signature.__defaults__ = (Path("$sim/cpuinfo"), Path("/sys/devices/system/node"))
except ImportError:  # an interpreter without the tuner (a managed environment's)
    pass
EOF
if [ "$mode" = emulated ]; then
    command -v qemu-x86_64 >/dev/null || { echo "$0: needs qemu-user (apt-get install qemu-user)" >&2; exit 2; }
    cat >"$sim/python" <<EOF
#!/bin/bash
exec 2> >(grep --line-buffered -v "TCG doesn't support requested feature" >&2)
exec qemu-x86_64 -cpu EPYC-Rome "$python" "\$@"
EOF
    chmod +x "$sim/python"
fi
cd "$root"
PYTHONPATH="$sim/site" "$python" -m pytest -p no:cacheprovider --deselect tests/test_emulated.py --timeout 1800 "$@"
