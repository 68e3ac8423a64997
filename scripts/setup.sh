#!/usr/bin/env bash
# Installs what xlb needs to build, test and run its lab on Debian 12, as root.
# Idempotent: installs only what is missing. Sourced by scripts/lab.sh and
# scripts/test.sh; safe to run by itself.
set -euo pipefail

need_root() {
  if [ "$(id -u)" -ne 0 ]; then
    echo "xlb: run as root (BPF, network namespaces and apt need it)" >&2
    exit 1
  fi
}
need_root

# Debian packages: clang for the BPF programs, libbpf headers, the lab's
# servers and tools, Prometheus for the observability tests.
pkgs=(clang llvm libbpf-dev linux-libc-dev iproute2 nginx-light wrk iperf3 ipset
      bpftool clang-format m4 pkg-config libelf-dev procps iptables nftables
      prometheus curl ca-certificates gcc)
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "xlb setup: installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  # nginx-light's package enables a system nginx: the lab runs its own.
  systemctl disable --now nginx >/dev/null 2>&1 || true
fi

# Rust: the toolchain from rustup (Debian's rustc is too old for aya), with
# rustfmt and clippy for the test command.
if ! command -v cargo >/dev/null 2>&1 && [ -x "$HOME/.cargo/bin/cargo" ]; then
  export PATH="$HOME/.cargo/bin:$PATH"
fi
if ! command -v cargo >/dev/null 2>&1; then
  echo "xlb setup: installing the Rust toolchain with rustup"
  curl --proto '=https' --tlsv1.2 -sSf https://sh.rustup.rs | sh -s -- -y --profile minimal
  export PATH="$HOME/.cargo/bin:$PATH"
fi
if command -v rustup >/dev/null 2>&1; then
  for c in rustfmt clippy; do
    rustup component list --installed 2>/dev/null | grep -q "^$c" || rustup component add "$c"
  done
fi

# bpffs for pinned maps and links.
mountpoint -q /sys/fs/bpf || mount -t bpf bpf /sys/fs/bpf
