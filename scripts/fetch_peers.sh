#!/usr/bin/env bash
# Fetches the peers the GPU benchmarks import into .whl/ (git-ignored; gpu_run.sh installs it on
# the GPU machine, where nothing can be downloaded): diffusers 0.42.1 with its two pure-Python
# dependencies, einops, and FastVideo's kernel package fastvideo-kernel 0.3.2. PyPI has no wheel
# of the latter for this machine, so its source distribution is fetched and only its Python
# package kept (as .whl/fastvideo_kernel-0.3.2-python.tar.gz): the benchmark runs its Triton
# backend (FASTVIDEO_VSA_TRITON=1), which needs no compiled extension.
#   bash scripts/fetch_peers.sh
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p .whl
python3 -m pip download -q --no-deps --only-binary :all: -d .whl \
  diffusers==0.42.1 importlib_metadata==10.2.0 zipp==4.1.2 einops==0.8.2
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
# The source distribution's address from the package index (pip itself would try to build it);
# its SHA-256 is checked against the one the index gives.
python3 - "$tmp/fastvideo_kernel-0.3.2.tar.gz" <<'PY'
import hashlib, re, sys, urllib.request
page = urllib.request.urlopen("https://pypi.org/simple/fastvideo-kernel/").read().decode()
url, digest = re.search(r'href="([^"#]*/fastvideo_kernel-0\.3\.2\.tar\.gz)#sha256=([0-9a-f]+)"', page).groups()
data = urllib.request.urlopen(url).read()
if hashlib.sha256(data).hexdigest() != digest:
    sys.exit("fastvideo-kernel 0.3.2: the download does not match the index's SHA-256")
open(sys.argv[1], "wb").write(data)
PY
tar -xzf "$tmp/fastvideo_kernel-0.3.2.tar.gz" -C "$tmp"
tar -czf .whl/fastvideo_kernel-0.3.2-python.tar.gz -C "$tmp"/fastvideo_kernel-0.3.2/python fastvideo_kernel
ls -la .whl
