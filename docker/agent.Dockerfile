# netmon node agent and inventory snapshotter: `netmon-agent run` / `netmon-agent inventory`.
# Build from the repository root:  docker build -f docker/agent.Dockerfile -t ghcr.io/netmon/netmon-agent:0.1.0 .
#
# Base pinned by exact tag (Debian bookworm, the Python of constraints.txt's lock). For
# byte-for-byte reproducible builds also pin its digest, e.g.
#   FROM python:3.11.14-slim-bookworm@sha256:<digest from `docker buildx imagetools inspect`>
# and let a bot (Renovate/Dependabot) bump both together.
FROM python:3.11.14-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# BCC (with its bundled clang/LLVM) compiles bpf/ on the node against the host's kernel
# headers: in the DaemonSet's bpf-pin init container (`python -m node_agent.bpfload pin DIR`
# under /bin/sh, with /lib/modules and /usr/src mounted), which pins the programs for the
# agent container; no headers in the image. conntrack/nft/ip are for operators debugging.
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
      bpfcc-tools python3-bpfcc conntrack nftables iproute2 \
 && rm -rf /var/lib/apt/lists/*

WORKDIR /opt/netmon
# Installed from the same pins as CI and scripts/setup.sh.
COPY pyproject.toml setup.py constraints.txt README.md ./
COPY lake/ lake/
COPY node_agent/ node_agent/
# The eBPF C sources, compiled by BCC on the node. node_agent/bpfload.py finds them beside
# its own package (node_agent/../bpf), so the package is installed in place (editable, as
# scripts/setup.sh does) and runs from /opt/netmon, next to /opt/netmon/bpf.
COPY bpf/ bpf/
# gcc builds node_agent/_cttable.c (the accounter's compact state, setup.py) and is removed
# again; the build fails here rather than ship an agent that falls back to the larger dict state.
RUN apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends gcc libc6-dev \
 && python -m venv /opt/venv \
 && /opt/venv/bin/pip install -c constraints.txt -e ".[agent]" \
 && /opt/venv/bin/python -c "import node_agent._cttable" \
 && apt-get purge -y gcc libc6-dev && apt-get autoremove -y && rm -rf /var/lib/apt/lists/* \
 # BCC's Python module is pure ctypes over the system libbcc: link it into the venv, as
 # scripts/setup.sh does (the PyPI package named `bcc` is unrelated).
 && ln -s /usr/lib/python3/dist-packages/bcc \
      "$(/opt/venv/bin/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')/bcc" \
 && cd / && /opt/venv/bin/python -c "import bcc, node_agent.bpfload as b; assert b.BPF_SRC_DIR.is_dir(), b.BPF_SRC_DIR" \
 # The init container's command: the module's CLI answers (usage: exit 2) from any directory.
 && { /opt/venv/bin/python -m node_agent.bpfload 2>&1 || true; } | grep -q "pin DIR"

ENV PATH=/opt/venv/bin:$PATH

# Runs as root by default: the DaemonSet needs it (privileged, conntrack, eBPF). The
# inventory Deployment overrides the user (runAsUser 65532) and mounts a read-only root.
ENTRYPOINT ["netmon-agent"]
CMD ["run"]
