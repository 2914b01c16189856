#!/usr/bin/env bash
# Installs what building and testing vdit needs on Debian or Ubuntu: a C toolchain, pkg-config,
# clang (for the FFmpeg bindings), the FFmpeg development libraries, and Rust when cargo is
# missing. Safe to run again: it only installs what is absent.
set -euo pipefail

SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi

PACKAGES=(build-essential pkg-config clang libclang-dev curl ca-certificates
          libavcodec-dev libavformat-dev libavutil-dev libswscale-dev libavfilter-dev libavdevice-dev)
missing=()
for p in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
  echo "setup: installing ${missing[*]}" >&2
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get update -q
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}"
fi

if ! command -v cargo >/dev/null 2>&1; then
  if [ ! -x "$HOME/.cargo/bin/cargo" ]; then
    echo "setup: installing Rust (rustup, stable)" >&2
    curl -sSf https://sh.rustup.rs | sh -s -- -y --profile minimal
  fi
  # Make cargo usable by the command that follows this script in the same shell line.
  if [ "$(id -u)" -eq 0 ]; then
    ln -sf "$HOME"/.cargo/bin/* /usr/local/bin/
  else
    echo "setup: Rust is in ~/.cargo/bin; run 'source ~/.cargo/env' or open a new shell" >&2
  fi
fi
echo "setup: ready" >&2
