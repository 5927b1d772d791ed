# syntax=docker/dockerfile:1
#
# One image for every role (api, worker, autoscaler): the Kubernetes
# manifests pick the role with the subcommand in `args`.
#
#   docker build -t REGISTRY/vidfarm:TAG .

# --- console: the web console's libraries from npm (as `make console`) -----
FROM node:20-bookworm-slim AS console
WORKDIR /web
COPY web/package.json web/package-lock.json web/copy-vendor.sh ./
RUN npm ci --no-audit --no-fund --loglevel=error && ./copy-vendor.sh /vendor

# --- builder: wheels for vidfarm and all its dependencies -------------------
FROM python:3.11-slim-bookworm AS builder

ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1

WORKDIR /src
# Only what the wheel needs (see .dockerignore), so editing tests or
# manifests doesn't invalidate this layer.
COPY pyproject.toml README.md constraints.txt ./
COPY vidfarm ./vidfarm
COPY uploader ./uploader
COPY transcoder ./transcoder
COPY autoscaler ./autoscaler
COPY --from=console /vendor ./uploader/console/vendor
# Pinned: every dependency at the version the tests ran against (constraints.txt).
# `[quality]`: imageio-ffmpeg's static ffmpeg with libvmaf, which scores renditions (it never encodes).
RUN pip wheel --wheel-dir /wheels --constraint constraints.txt '.[quality]'

# --- runtime -----------------------------------------------------------------
FROM python:3.11-slim-bookworm

# ffmpeg/ffprobe from Debian: its build carries h264_nvenc, which loads the
# NVIDIA driver libraries at run time on GPU nodes and is simply unused on
# CPU nodes. tini is PID 1 (see ENTRYPOINT).
RUN apt-get update \
    && apt-get install -y --no-install-recommends ffmpeg tini \
    && rm -rf /var/lib/apt/lists/*

# Fixed numeric uid/gid: Kubernetes' runAsNonRoot can only verify a numeric
# USER, and the shared storage volume is written by this uid from every pod.
RUN groupadd --system --gid 10001 vidfarm \
    && useradd --system --uid 10001 --gid 10001 --home-dir /home/vidfarm \
       --create-home --shell /usr/sbin/nologin vidfarm

# Install from the builder's wheels without copying them into a layer.
RUN --mount=type=bind,from=builder,source=/wheels,target=/wheels \
    pip install --no-cache-dir --no-index --find-links=/wheels 'vidfarm[quality]'

# LD_LIBRARY_PATH: GKE's NVIDIA driver installer mounts the driver libraries
# (libcuda, libnvidia-encode for h264_nvenc) at /usr/local/nvidia/lib64 and
# nowhere the loader searches by default; the NVIDIA container toolkit (EKS,
# the GPU Operator) puts them in standard paths, where this changes nothing.
ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    VIDFARM_HOME=/home/vidfarm/.vidfarm \
    LD_LIBRARY_PATH=/usr/local/nvidia/lib64:/usr/local/nvidia/lib

USER 10001:10001
WORKDIR /home/vidfarm
# API, worker metrics, autoscaler metrics.
EXPOSE 8000 9100 9101

# tini as PID 1 reaps zombies and forwards SIGTERM to `vidfarm` itself (not
# to its whole process group: no -g), so on scale-in the worker gets the
# signal, does RQ's warm shutdown and its running ffmpeg finishes the job.
ENTRYPOINT ["tini", "--", "vidfarm"]
CMD ["api"]
