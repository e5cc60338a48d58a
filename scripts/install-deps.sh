#!/usr/bin/env bash
# Install what building and testing Understudy needs on a Debian machine (as root).
# Idempotent: installs only what is missing. The Rust toolchain itself (>= 1.90,
# from rustup) must already be on the machine: Debian's cargo is too old.
set -euo pipefail

need_rust="1.94.1"
if ! command -v cargo >/dev/null 2>&1; then
    echo "cargo not found: install Rust >= $need_rust with rustup (https://rustup.rs) and retry" >&2
    exit 1
fi
have=$(rustc --version | awk '{print $2}')
if [ "$(printf '%s\n%s\n' "$need_rust" "$have" | sort -V | head -1)" != "$need_rust" ]; then
    echo "rustc $have is older than $need_rust: run 'rustup update stable' and retry" >&2
    exit 1
fi

# Debian packages the build, the tests and the demo use (gcc and make: jemalloc,
# the controller's allocator, is built from C).
pkgs=(ca-certificates gcc libc6-dev make python3 python3-pip python3-venv iproute2 iptables arping iputils-ping procps mount
      nfs-ganesha nfs-ganesha-vfs libnfs-utils
      chromium chromium-driver  # the dashboard's browser test (headless)
      util-linux e2fsprogs fuse3  # the DRBD emulator's block mode: losetup, mkfs.ext4 (tests), fusermount3 for manual cleanup
      faketime)  # libfaketime: the fault matrix's clock jump on one controller
missing=()
for p in "${pkgs[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
    if [ "$(id -u)" -ne 0 ]; then
        echo "missing Debian packages: ${missing[*]}; run as root or: apt-get install -y ${missing[*]}" >&2
        exit 1
    fi
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}"
fi

# moto's EC2 server (the EC2 stand-in) from PyPI, in a venv of our own.
venv="${UNDERSTUDY_VENV:-$HOME/.cache/understudy-venv}"
if [ ! -x "$venv/bin/moto_server" ]; then
    python3 -m venv "$venv"
    "$venv/bin/pip" install -q "moto[server]"
fi
