# netmon cost job image: the Ray head, workers and job submitter of the KubeRay RayCronJob
# (`netmon-jobs cost`). Build from the repository root:
#   docker build -f docker/jobs.Dockerfile -t ghcr.io/netmon/netmon-jobs:0.1.0 .
#
# Base pinned by exact tag: the same Ray (2.60.0, see constraints.txt) and Python (3.11) the
# job is tested with; KubeRay requires head/worker images to match rayVersion in the RayCronJob.
# For reproducible builds also pin the digest:
#   FROM rayproject/ray:2.60.0-py311@sha256:<digest from `docker buildx imagetools inspect`>
FROM rayproject/ray:2.60.0-py311

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

USER root
WORKDIR /opt/netmon
COPY pyproject.toml constraints.txt README.md ./
COPY lake/ lake/
COPY jobs/ jobs/
# Installed into the image's own Python (the one `ray start` runs), pinned by constraints.txt,
# so the cluster's Ray is exactly the 2.60.0 the base image ships.
RUN python -m pip install -c constraints.txt ".[jobs]" \
 && python -c "import jobs, lake, ray; assert ray.__version__ == '2.60.0', ray.__version__"

# The base image's `ray` user; the RayCronJob pod templates also require runAsUser 1000.
USER 1000
WORKDIR /home/ray
