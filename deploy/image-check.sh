#!/usr/bin/env bash
# Build the vidfarm image and check it the way Kubernetes runs it (issue 9).
#
#   deploy/image-check.sh build   # docker build, or buildah where there is no Docker daemon
#   deploy/image-check.sh check   # the checks below, in the built image
#   deploy/image-check.sh         # both (what `make image-check` runs; `make image` only builds)
#   deploy/image-check.sh run ENTRYPOINT ARGS...   # one command in the image, run as the checks run
#
# Checks, each in a fresh container as uid 10001 with a read-only root and /tmp as tmpfs (the
# worker pods' securityContext and volumes):
#   1. `vidfarm --help` runs (the entry point, its imports, tini);
#   2. ffmpeg lists h264_nvenc (the GPU pool uses the same image);
#   3. a 1080p + 720p chunk transcode succeeds: the command transcoder/command.py builds, run by the
#      image's own Python and ffmpeg, writing only under /tmp;
#   4. the quality scorer is there: imageio-ffmpeg's ffmpeg, with libvmaf (transcoder/quality.py).
#
# Where the Dockerfile's base images cannot be pulled (no registry but package registries reachable)
# and buildah builds, the bases are bootstrapped from Debian packages with debootstrap, from the
# mirror apt uses, and stored under the names the Dockerfile's FROM lines use. They are stand-ins
# (labelled so, Debian's Python 3.11 and Node.js 18 instead of the official images' builds), for
# checking the Dockerfile here, never for pushing: `build` refuses to tag them anywhere but locally.
#
# Environment: IMAGE (default localhost/vidfarm:check), BUILDER (docker|buildah; default: docker
# when its daemon answers, else buildah), RUNNER (docker|podman; default: the same rule),
# DEBIAN_MIRROR (default: the first URI in apt's sources), SUITE (default bookworm).
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
IMAGE=${IMAGE:-localhost/vidfarm:check}
SUITE=${SUITE:-bookworm}
# Where bootstrapped root filesystems are built (not /tmp: a few hundred MiB each, and /tmp may be a tmpfs).
WORK=${WORK:-/var/tmp/vidfarm-image-check}
STANDIN_LABEL=io.vidfarm.standin
# chroot isolation for buildah's RUN steps: the OCI runtime (crun) cannot start containers where
# cgroups are in hybrid v1/v2 mode ("cgroups in hybrid mode not supported"), as in this repository's
# sandbox VMs. RUN steps only install packages and build wheels; they need nothing more.
export BUILDAH_ISOLATION=${BUILDAH_ISOLATION:-chroot}

log() { printf '[image-check] %s\n' "$*" >&2; }
die() { log "FAILED: $*"; exit 1; }

docker_ok() { command -v docker >/dev/null && docker info >/dev/null 2>&1; }

pick_builder() {
  if [ -n "${BUILDER:-}" ]; then echo "$BUILDER"; return; fi
  if docker_ok; then echo docker; return; fi
  command -v buildah >/dev/null || die "no Docker daemon and no buildah (apt-get install buildah)"
  echo buildah
}

pick_runner() {
  if [ -n "${RUNNER:-}" ]; then echo "$RUNNER"; return; fi
  if docker_ok; then echo docker; return; fi
  # podman shares buildah's image store (containers/storage), so it runs what buildah built; where
  # its OCI runtime cannot start containers (see BUILDAH_ISOLATION above), a chroot does the same.
  if command -v podman >/dev/null && podman run --rm --network none "$IMAGE" true >/dev/null 2>&1; then
    echo podman; return
  fi
  echo chroot
}

debian_mirror() {
  if [ -n "${DEBIAN_MIRROR:-}" ]; then echo "$DEBIAN_MIRROR"; return; fi
  local uri
  uri=$(grep -hsE '^\s*URIs:' /etc/apt/sources.list.d/*.sources | awk '{print $2}' | grep -v security | head -n1 || true)
  [ -n "$uri" ] || uri=$(grep -hsE '^\s*deb\s' /etc/apt/sources.list | awk '{print $2}' | grep -v security | head -n1 || true)
  echo "${uri:-http://deb.debian.org/debian}"
}

# The FROM images of the Dockerfile, stage aliases and `scratch` left out.
base_images() {
  awk 'toupper($1) == "FROM" { for (i = 2; i <= NF; i++) if ($i !~ /^--/) { print $i; break } }' \
    "$ROOT/Dockerfile" | sort -u | while read -r name; do
      grep -qiE "^FROM .* AS $name\$" "$ROOT/Dockerfile" || [ "$name" = scratch ] || echo "$name"
    done
}

# Short names as buildah resolves them for a Dockerfile: docker.io/library/NAME:TAG.
qualified() { case "$1" in */*/*) echo "$1" ;; */*) echo "docker.io/$1" ;; *) echo "docker.io/library/$1" ;; esac; }

# Removes a bootstrap root, unmounting first what a debootstrap that died left mounted in it (/proc,
# /sys): rm -rf must never walk into the host's.
remove_rootfs() {
  local rootfs=$1 target
  [ -e "$rootfs" ] || return 0
  { findmnt -rn -o TARGET | grep -F "$rootfs/" || true; } | sort -r | while read -r target; do umount -l "$target"; done
  rm -rf --one-file-system "$rootfs"
}

MINBASE=localhost/vidfarm-debian-minbase:$SUITE

# A minimal Debian root (debootstrap --variant=minbase), committed once as $MINBASE. Packages are
# added on top with apt-get inside buildah, not with debootstrap --include: debootstrap's own
# resolver leaves big dependency trees (npm: some 300 node-* packages) unconfigured.
minbase() {
  buildah inspect --type image "$MINBASE" >/dev/null 2>&1 && return 0
  command -v debootstrap >/dev/null || die "no base image can be pulled and no debootstrap (apt-get install debootstrap)"
  local rootfs="$WORK/rootfs-minbase" mirror ctr mnt
  mirror=$(debian_mirror)
  log "debootstrap $SUITE from $mirror"
  remove_rootfs "$rootfs" && mkdir -p "$WORK"
  debootstrap --variant=minbase "$SUITE" "$rootfs" "$mirror" >"$rootfs.log" 2>&1 \
    || die "debootstrap; see $rootfs.log"
  # RUN steps use the mirror the bootstrap used (debootstrap writes only `main` of the suite).
  printf 'deb %s %s main\ndeb %s %s-updates main\n' "$mirror" "$SUITE" "$mirror" "$SUITE" \
    >"$rootfs/etc/apt/sources.list"
  rm -rf "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/cache/apt/archives/*.deb
  ctr=$(buildah from scratch)
  mnt=$(buildah mount "$ctr")
  cp -a "$rootfs"/. "$mnt"/
  buildah umount "$ctr" >/dev/null
  buildah config --cmd bash --env LANG=C.UTF-8 "$ctr"
  buildah commit --rm -q "$ctr" "$MINBASE" >/dev/null
  remove_rootfs "$rootfs"
}

# bootstrap NAME: $MINBASE plus what the official image NAME provides, committed under NAME.
bootstrap() {
  local name=$1 ref packages env_args=() cmd ctr
  ref=$(qualified "$name")
  case "$name" in
    python:3.11-*)
      packages="python3 python3-pip python3-venv python-is-python3 ca-certificates"
      # The official image's pip installs into its own /usr/local Python; Debian's refuses to touch
      # the system Python (PEP 668) unless told. Only this stand-in carries the variable.
      env_args=(--env PIP_BREAK_SYSTEM_PACKAGES=1)
      cmd=python3 ;;
    node:*)
      packages="nodejs npm ca-certificates"
      cmd=node ;;
    *) die "no recipe to bootstrap base image $name; pull it or add one" ;;
  esac
  minbase
  log "building stand-in $ref: $MINBASE + $packages"
  ctr=$(buildah from --pull=never "$MINBASE")
  buildah run --network host "$ctr" -- sh -c "apt-get update -qq && DEBIAN_FRONTEND=noninteractive \
    apt-get install -y -qq --no-install-recommends $packages >/dev/null && rm -rf /var/lib/apt/lists/*" \
    || die "apt-get install $packages in the stand-in for $name"
  buildah config "${env_args[@]}" --cmd "$cmd" \
    --label "$STANDIN_LABEL=bootstrapped from Debian $SUITE by deploy/image-check.sh; not the official image" \
    "$ctr"
  buildah commit --rm -q "$ctr" "$ref" >/dev/null
  log "stored $ref (stand-in)"
}

ensure_bases() {
  local name ref
  for name in $(base_images); do
    ref=$(qualified "$name")
    if buildah inspect --type image "$ref" >/dev/null 2>&1; then
      log "base $ref: present"
    elif timeout 60 buildah pull -q "$ref" >/dev/null 2>&1; then
      log "base $ref: pulled"
    else
      log "base $ref: cannot be pulled"
      bootstrap "$name"
    fi
  done
}

build() {
  local builder
  builder=$(pick_builder)
  log "building $IMAGE with $builder"
  case "$builder" in
    docker) docker build -t "$IMAGE" "$ROOT" ;;
    buildah)
      ensure_bases
      if buildah images --format '{{.Name}}:{{.Tag}} {{.Labels}}' 2>/dev/null | grep -q "$STANDIN_LABEL" \
        && [[ "$IMAGE" != localhost/* ]]; then
        die "the bases are local stand-ins; tag the image localhost/... (IMAGE=$IMAGE would look pushable)"
      fi
      # --pull=missing: bases from the store (bootstrapped or pulled above) are used as they are.
      # --network host: RUN steps reach the package mirrors without CNI/netavark set up here.
      buildah build --pull=missing --network host --layers -t "$IMAGE" "$ROOT" ;;
    *) die "unknown BUILDER=$builder" ;;
  esac
}

# run_in_image ENTRYPOINT ARGS...: one container as Kubernetes runs a worker pod: uid/gid 10001,
# read-only root, a tmpfs on /tmp, no capabilities, no network (nothing in these checks needs it).
run_in_image() {
  local runner entrypoint=$1
  shift
  runner=$(pick_runner)
  case "$runner" in
    docker|podman)
      "$runner" run --rm --user 10001:10001 --read-only --tmpfs /tmp:rw,size=512m,mode=1777 \
        --cap-drop ALL --security-opt no-new-privileges --network none \
        --env VIDFARM_HOME=/tmp/vidfarm --entrypoint "$entrypoint" "$IMAGE" "$@" ;;
    chroot) run_in_chroot "$entrypoint" "$@" ;;
    *) die "unknown RUNNER=$runner" ;;
  esac
}

# The same without an OCI runtime: the image's root from buildah, bind-mounted read-only in private
# mount, PID and network namespaces, a tmpfs on /tmp, then chroot to uid/gid 10001 (which leaves no
# capabilities) with the image's environment.
run_in_chroot() {
  local ctr mnt status=0 env=()
  ctr=$(buildah from --pull=never "$IMAGE")
  mnt=$(buildah mount "$ctr")
  mapfile -t env < <(buildah inspect --type image --format '{{range .OCIv1.Config.Env}}{{println .}}{{end}}' "$IMAGE" \
    | grep -v '^$')
  unshare --mount --pid --net --fork -- sh -ec '
    image=$1; root=/run/vidfarm-check-root; shift
    mount --make-rprivate /
    mkdir -p "$root"
    mount --bind "$image" "$root"
    mount -o remount,bind,ro "$root"
    mount -t tmpfs -o size=512m,mode=1777 tmpfs "$root/tmp"
    mount -t proc proc "$root/proc"
    mount --rbind /dev "$root/dev"
    exec chroot --userspec=10001:10001 --groups=10001 "$root" "$@"
  ' sh "$mnt" env -i "${env[@]}" HOME=/home/vidfarm VIDFARM_HOME=/tmp/vidfarm "$@" || status=$?
  buildah umount "$ctr" >/dev/null
  buildah rm "$ctr" >/dev/null
  return "$status"
}

# What a chunk job of a 1080p source runs: transcoder.command.chunk_args for the 1080p and 720p rungs,
# built from the probe and the ladder as transcoder/job.py builds it, x264 with 2 threads.
TRANSCODE_PY='
import dataclasses, json, subprocess, sys
from pathlib import Path
from transcoder.command import X264, chunk_args
from transcoder.job import count_frames
from transcoder.ladder import plan_outputs, rungs_named
from vidfarm.chunks import ChunkSpan, chunk_window
from vidfarm.probe import probe

tmp = Path("/tmp/check")
tmp.mkdir()
source = tmp / "source.mp4"
subprocess.run(["ffmpeg", "-hide_banner", "-loglevel", "error", "-f", "lavfi", "-i",
                "testsrc2=size=1920x1080:rate=30:duration=2", "-c:v", "libx264", "-preset", "ultrafast",
                "-pix_fmt", "yuv420p", str(source)], check=True)
info = probe(source, max_duration_s=60, max_pixels=1 << 40)
plans = plan_outputs(info, rungs_named(["1080p", "720p"]))
window = chunk_window(ChunkSpan(0, 0, None), plans[0].fps, 0, info.file_start_s)
outputs = [(p, tmp / f"{p.name}.mp4") for p in plans]
args = chunk_args(source, outputs, window=window, frames=None, encoder=dataclasses.replace(X264, threads=2))
subprocess.run(["ffmpeg", *args], check=True, stdout=subprocess.DEVNULL)
frames = {p.name: count_frames(path) for p, path in outputs}
print(json.dumps(frames))
sys.exit(0 if frames == {"1080p": 60, "720p": 60} else 1)
'

SCORER_PY='
import sys
from transcoder.quality import scorer_binary
binary = scorer_binary("")
print(binary)
sys.exit(0 if binary else 1)
'

check() {
  local out
  log "1/4 vidfarm --help"
  out=$(run_in_image tini -- vidfarm --help) || die "vidfarm --help"
  grep -q worker <<<"$out" || die "vidfarm --help does not list the worker command"
  log "2/4 ffmpeg lists h264_nvenc"
  out=$(run_in_image ffmpeg -hide_banner -encoders) || die "ffmpeg -encoders"
  grep -q h264_nvenc <<<"$out" || die "ffmpeg has no h264_nvenc"
  log "3/4 1080p + 720p transcode as uid 10001, read-only root, /tmp tmpfs"
  out=$(run_in_image python -c "$TRANSCODE_PY") || die "transcode: $out"
  log "frames per rendition: $out"
  log "4/4 the quality scorer has libvmaf"
  out=$(run_in_image python -c "$SCORER_PY") || die "no quality scorer: renditions would be not scored"
  log "scorer: $out"
  log "all checks passed for $IMAGE"
}

case "${1:-all}" in
  build) build ;;
  check) check ;;
  all) build && check ;;
  bases) ensure_bases ;;
  run) shift; run_in_image "$@" ;;  # run ENTRYPOINT ARGS...: one command in the image, as the checks run
  *) echo "usage: $0 [build|check|all|bases|run ENTRYPOINT ARGS...]" >&2; exit 2 ;;
esac
