#!/bin/bash
# A small ffmpeg with h264_nvenc and libx264 (x264 linked statically, only glibc shared), to carry to a
# GPU machine that has no ffmpeg and run the worker's NVENC probe there (BENCHMARKS.md, "NVENC
# detection on a GPU without an encoder"). Debian bookworm, as root; about 2.5 minutes on 2 cores.
#   [FFSRC=/tmp/ffsrc] bench/nvenc_probe_ffmpeg.sh [OUT_DIR]   -> OUT_DIR/ffmpeg (default /tmp/ffbuild)
set -euo pipefail
out=${1:-/tmp/ffbuild}
src=${FFSRC:-/tmp/ffsrc}
if ! ls /etc/apt/sources.list.d/*debsrc* >/dev/null 2>&1; then
    printf 'Types: deb-src\nURIs: http://deb.debian.org/debian\nSuites: bookworm\nComponents: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n' \
        > /etc/apt/sources.list.d/vidfarm-debsrc.sources
    apt-get update -q
fi
DEBIAN_FRONTEND=noninteractive apt-get install -y -q libffmpeg-nvenc-dev libx264-dev nasm pkg-config dpkg-dev
mkdir -p "$src" "$out" "$src/x264/pkgconfig"
(cd "$src" && apt-get source -q --download-only ffmpeg && tar xf ffmpeg_*.orig.tar.xz)
# A folder holding only libx264.a, so the linker takes the static library over libx264.so.
ln -sf /usr/lib/x86_64-linux-gnu/libx264.a "$src/x264/libx264.a"
sed -e "s#^libdir=.*#libdir=$src/x264#" -e 's#^Libs: .*#Libs: -L${libdir} -lx264#' \
    /usr/lib/x86_64-linux-gnu/pkgconfig/x264.pc > "$src/x264/pkgconfig/x264.pc"
cd "$src"/ffmpeg-*/
PKG_CONFIG_PATH="$src/x264/pkgconfig" nice -n 19 ./configure --pkg-config-flags=--static --extra-ldflags=-static-libgcc \
    --disable-everything --disable-autodetect --disable-doc --disable-ffplay --disable-ffprobe --disable-debug \
    --enable-gpl --enable-libx264 --enable-ffnvcodec --enable-nvenc \
    --enable-encoder=h264_nvenc,libx264 --enable-decoder=h264,rawvideo --enable-parser=h264 --enable-demuxer=mov \
    --enable-indev=lavfi --enable-filter=color,testsrc,testsrc2,scale,format,null,nullsrc,split \
    --enable-muxer=null,mp4 --enable-protocol=file,pipe
nice -n 19 make -j"$(nproc)"
cp ffmpeg "$out/ffmpeg"
ldd "$out/ffmpeg"
"$out/ffmpeg" -hide_banner -encoders | grep -E 'h264_nvenc|libx264'
