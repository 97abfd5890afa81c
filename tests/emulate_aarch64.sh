#!/bin/bash
# The tuner on an aarch64 server, an Arm Neoverse-N1 (as AWS Graviton2: oneDNN off by default in stock
# TensorFlow), emulated by qemu-user on an x86-64 machine. Run by hand; CI does not run it (TensorFlow takes
# about 40 s to import under emulation, so a study of 4 trials takes about 12 minutes).
#
#   tests/emulate_aarch64.sh              # build it once, then: tuner doctor, and a tiny tune on 1 core
#   tests/emulate_aarch64.sh doctor       # any tuner command and its arguments
#
# What it builds, in $TUNER_ARM64 (default ~/.cache/tuner/arm64): Debian's arm64 CPython 3.11 and its
# libraries unpacked into root/ (apt-get download and dpkg -x: nothing is installed on this system, but arm64
# is added to dpkg's foreign architectures, so it needs root on Debian bookworm), a venv with this checkout
# installed editable from PyPI's aarch64 wheels (pip install -e ., as the README's quick start does), and
# ./python, which runs that interpreter under qemu-aarch64. The tuner in it reads a Graviton2's /proc/cpuinfo
# (qemu-user shows the host's) and starts its workers through ./python (no binfmt_misc needed).
# Emulated speeds say nothing about an Arm CPU: what it checks is that the tuner installs, probes and tunes
# there, and what it reads back.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
dir=${TUNER_ARM64:-${XDG_CACHE_HOME:-$HOME/.cache}/tuner/arm64}
[ "$(uname -m)" = x86_64 ] || { echo "$0: runs on x86-64 (it emulates aarch64)" >&2; exit 2; }
command -v qemu-aarch64 >/dev/null || { echo "$0: needs qemu-user (apt-get install qemu-user)" >&2; exit 2; }
mkdir -p "$dir"
dir=$(cd "$dir" && pwd)

case "$dir" in *[\"\\\$\`]*) echo "$0: $dir: a folder without quotes, backslashes or dollars, please" >&2; exit 2 ;; esac
if [ ! -e "$dir/root/.unpacked" ]; then  # written last: an interrupted unpack is done again
    echo "== Debian's arm64 CPython 3.11, unpacked into $dir/root"
    dpkg --print-foreign-architectures | grep -qx arm64 || dpkg --add-architecture arm64
    apt-get update -qq
    rm -rf "$dir/debs" "$dir/root" "$dir/venv" && mkdir -p "$dir/debs"
    packages=(python3.11-minimal libpython3.11-minimal libpython3.11-stdlib python3.11 libc6 libexpat1 zlib1g libssl3
        libffi8 libsqlite3-0 libbz2-1.0 liblzma5 libncursesw6 libtinfo6 libreadline8 libuuid1 libgcc-s1 libstdc++6
        libcrypt1 libnsl2 libtirpc3 libdb5.3 libgssapi-krb5-2 libkrb5-3 libk5crypto3 libkrb5support0 libcom-err2
        libkeyutils1 libgomp1)
    (cd "$dir/debs" && apt-get download -qq "${packages[@]/%/:arm64}" media-types)
    for deb in "$dir"/debs/*.deb; do dpkg -x "$deb" "$dir/root"; done
    touch "$dir/root/.unpacked"
fi

if [ ! -e "$dir/venv/bin/python" ]; then
    echo "== a venv for it, with pip"
    qemu-aarch64 -L "$dir/root" "$dir/root/usr/bin/python3.11" -m venv --without-pip "$dir/venv"
fi
cat >"$dir/python" <<EOF
#!/bin/sh
exec qemu-aarch64 -cpu neoverse-n1 -L "$dir/root" "$dir/venv/bin/python" "\$@"
EOF
chmod +x "$dir/python"
# A Neoverse-N1 /proc/cpuinfo with this machine's count of logical CPUs (the tuner's cores come from /sys).
for ((cpu = 0; cpu < $(nproc --all); cpu++)); do
    printf 'processor\t: %d\nFeatures\t: fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm lrcpc dcpop asimddp ssbs\nCPU implementer\t: 0x41\nCPU architecture: 8\nCPU variant\t: 0x3\nCPU part\t: 0xd0c\nCPU revision\t: 1\n\n' "$cpu"
done >"$dir/cpuinfo"
site=$(echo "$dir"/venv/lib/python3.11/site-packages)
# A .pth hook, not sitecustomize (Debian's own sitecustomize comes first on the path).
cat >"$site/arm64_hook.py" <<EOF
import sys
from pathlib import Path

sys.executable = "$dir/python"
try:
    import tuner.signature

    tuner.signature.cpu_signature.__defaults__ = (Path("$dir/cpuinfo"), Path("/sys/devices/system/node"))
except ImportError:  # before the tuner is installed
    pass
EOF
echo "import arm64_hook" >"$site/zz_arm64_hook.pth"
if ! "$dir/python" -m pip --version >/dev/null 2>&1; then
    "${PYTHON:-python3}" -m pip download -q --no-deps -d "$dir/wheels" pip  # this machine's pip fetches it
    wheel=$(ls "$dir"/wheels/pip-*.whl | tail -1)
    "$dir/python" "$wheel/pip" install -q --no-warn-script-location "$wheel"
fi
if ! "$dir/python" -c "import tuner, tensorflow" 2>/dev/null; then
    echo "== pip install -e $root (aarch64 wheels; several minutes under emulation)"
    "$dir/python" -m pip install -q --no-warn-script-location -e "$root"
fi

if [ $# -gt 0 ]; then
    exec "$dir/python" -m tuner.cli "$@"
fi
"$dir/python" -m tuner.cli doctor
rm -f "$dir/t.db"
exec "$dir/python" -m tuner.cli tune --model tiny --cores 1 --mode infer --trials 4 \
    --space "$root/tests/spaces/threads.toml" --storage "sqlite:///$dir/t.db"
