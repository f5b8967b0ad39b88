#!/bin/bash
# Make this machine ready to run and test hsm: Debian packages, the venv at
# .venv/ with hsm installed (editable), and Debian's sanlock binding exposed
# to it. Safe to run again: each step is skipped when already done.
set -euo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
cd "$top"

APT_PACKAGES=(python3.11 python3-venv lvm2 sanlock python3-sanlock qemu-utils qemu-block-extra rpm cpio systemd openssl fuse3 libfuse2 xfsprogs btrfs-progs
              tgt libiscsi-bin open-iscsi multipath-tools nfs-ganesha nfs-ganesha-vfs rpcbind libnfs-utils libnfs-dev)

missing=()
for pkg in "${APT_PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if ((${#missing[@]})); then
    if [ "$(id -u)" != 0 ]; then
        echo "bootstrap: need root to install: ${missing[*]}" >&2
        exit 1
    fi
    echo "bootstrap: installing ${missing[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi

# hsmd's own user (tests run hsmd as it, with supervdsmd as root): the RPM's sysusers file.
if ! getent passwd hsm >/dev/null; then
    if [ "$(id -u)" = 0 ]; then
        systemd-sysusers "$top/etc/sysusers.d/hsm.conf"
    else
        echo "bootstrap: no user hsm (needs root: systemd-sysusers etc/sysusers.d/hsm.conf); its tests will skip" >&2
    fi
fi

# Debian's Python 3.11: the one sanlock's binding is built for, and one every user can run
# (hsmd runs unprivileged in the tests; a Python under /root would not start for it).
python=""
for candidate in /usr/bin/python3.11 python3.11 python3; do
    if command -v "$candidate" >/dev/null &&
       "$candidate" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))' 2>/dev/null; then
        python=$(command -v "$candidate")
        break
    fi
done
[ -n "$python" ] || { echo "bootstrap: no Python 3.11 found" >&2; exit 1; }

# A venv made by another Python (an older bootstrap) is made again.
if [ -x .venv/bin/python ] && ! grep -qx "home = $(dirname "$python")" .venv/pyvenv.cfg; then
    echo "bootstrap: .venv was made by another Python; making it again with $python"
    rm -rf .venv
fi
if [ ! -x .venv/bin/python ]; then
    "$python" -m venv .venv
fi
stamp=.venv/.hsm-installed
want=$(cat setup.py tools/requirements-dev.txt | sha256sum | cut -d' ' -f1)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
    .venv/bin/pip install -q --disable-pip-version-check -r tools/requirements-dev.txt
    .venv/bin/pip install -q --disable-pip-version-check --no-build-isolation -e .
    echo "$want" > "$stamp"
fi

# Debian's sanlock module is not on PyPI: link it into a folder the venv reads.
site=$(.venv/bin/python -c 'import sysconfig; print(sysconfig.get_path("purelib"))')
if [ ! -f "$site/sanlock_system.pth" ]; then
    so=$(/usr/bin/python3 -c 'import sanlock; print(sanlock.__file__)')
    mkdir -p .venv/sysext
    ln -sf "$so" .venv/sysext/
    echo "$top/.venv/sysext" > "$site/sanlock_system.pth"
fi
