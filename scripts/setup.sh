#!/usr/bin/env bash
# Sets up everything netmon needs on a fresh Debian/Ubuntu machine, idempotently:
#   system packages (conntrack, nftables, BCC, kernel headers; Chromium, which the tests use to
#   render `netmon-jobs report` pages headless), a virtualenv in .venv with
#   the pinned Python dependencies (constraints.txt), and BCC's Python module linked into it.
# Usage: scripts/setup.sh [--no-system]   (--no-system skips apt, e.g. for non-root users)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
SYSTEM=1
[ "${1:-}" = "--no-system" ] && SYSTEM=0

if [ "$SYSTEM" = 1 ] && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  need=()
  # bind9 + bind9-dnsutils: the DNS tracer is tested against a real server (named) and dig;
  # chromium + fonts: the cost report page is checked in headless Chromium
  for p in conntrack nftables iproute2 iputils-ping bpfcc-tools python3-bpfcc procps bind9 bind9-dnsutils \
           chromium fonts-dejavu-core; do
    dpkg -s "$p" >/dev/null 2>&1 || need+=("$p")
  done
  # BCC compiles programs against kernel headers; the distribution's header package is the
  # closest available when the running kernel's own headers are not packaged.
  if [ ! -e "/lib/modules/$(uname -r)/build/include" ]; then
    if apt-cache policy "linux-headers-$(uname -r)" 2>/dev/null | grep -q Candidate: ; then
      need+=("linux-headers-$(uname -r)")
    else
      need+=(linux-headers-amd64)
    fi
  fi
  if [ ${#need[@]} -gt 0 ]; then
    echo "setup: installing ${need[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
  fi
  if [ ! -e "/lib/modules/$(uname -r)/build/include" ]; then
    hdr=$(ls -d /usr/src/linux-headers-*-amd64 2>/dev/null | sort -V | tail -n1 || true)
    if [ -n "$hdr" ]; then
      mkdir -p "/lib/modules/$(uname -r)"
      ln -sfn "$hdr" "/lib/modules/$(uname -r)/build"
      ln -sfn "${hdr%-amd64}-common" "/lib/modules/$(uname -r)/source"
      echo "setup: linked kernel headers $hdr for $(uname -r)"
    fi
  fi
fi

if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade "pip>=24"
.venv/bin/python -m pip install -q -c constraints.txt -e ".[dev]"
# JupyterLab (jupyter-events) pulls in jsonschema[format-nongpl], whose rfc3987-syntax builds
# its IRI grammars at import: 4-5 s of CPU in every process that imports Ray (each job run,
# each Ray worker, each test's subprocess). Nothing here validates IRI formats; jsonschema
# skips that format without it, and the jobs image (".[jobs]") never has it.
.venv/bin/python -m pip uninstall -q -y rfc3987-syntax 2>/dev/null || true

# BCC's Python module is pure ctypes over the system libbcc: link it into the venv.
SITE=$(.venv/bin/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
if [ -d /usr/lib/python3/dist-packages/bcc ] && [ ! -e "$SITE/bcc" ]; then
  ln -s /usr/lib/python3/dist-packages/bcc "$SITE/bcc"
fi
echo "setup: ready (.venv)"
