#!/usr/bin/env bash
# Build the pinned MicroPython rp2 firmware for RPI_PICO (issue 33, point 1).
#
#   tools/rp2040/build_firmware.sh            # sources from the *_SRC variables below
#   OUT=path/to/RPI_PICO-v1.28.0.uf2 tools/rp2040/build_firmware.sh
#
# Pins (each checked: a source whose pinned commit is missing is refused):
#   micropython       v1.28.0      (the tag, resolved in the repository given)
#   pico-sdk          2.2.0        a1438dff1d38bd9c65dbd693f0e5db4b9ae91779
#   tinyusb           0.19.0-24    aa0fc2e08f1c2dd6f026a431e8989357fbb4c5bf
#   micropython-lib   (v1.28.0)    8380c7bb8f9e5e5260e9539156742925e00366b2
#   mbedtls           v3.6.2       107ea89daaefb9867ea9121002fbbdf926780e98
#   picotool          2.2.0        a7eb3988f0645239185fadb4e25d8279478c2dbb (built without libusb)
# These are exactly the submodule commits that MicroPython's v1.28.0 tag records.
#
# Each *_SRC is a git repository (bare or not) holding that commit; the pinned tree is
# exported from it with `git archive`-like plumbing, so no network is used. With network
# access, clones of the upstream repositories serve (git clone --bare URL).
#
# Needs: git, cmake, make, a host C/C++ compiler, python3, and Debian's
#   apt-get install gcc-arm-none-eabi libnewlib-arm-none-eabi libstdc++-arm-none-eabi-newlib cmake build-essential
set -euo pipefail

MICROPYTHON_SRC=${MICROPYTHON_SRC:?set MICROPYTHON_SRC to a git repository of micropython}
PICO_SDK_SRC=${PICO_SDK_SRC:?set PICO_SDK_SRC to a git repository of pico-sdk}
TINYUSB_SRC=${TINYUSB_SRC:?set TINYUSB_SRC to a git repository of tinyusb}
MICROPYTHON_LIB_SRC=${MICROPYTHON_LIB_SRC:?set MICROPYTHON_LIB_SRC to a git repository of micropython-lib}
MBEDTLS_SRC=${MBEDTLS_SRC:?set MBEDTLS_SRC to a git repository of mbedtls}
PICOTOOL_SRC=${PICOTOOL_SRC:?set PICOTOOL_SRC to a git repository of picotool}

MICROPYTHON_REF=v1.28.0
PICO_SDK_REF=a1438dff1d38bd9c65dbd693f0e5db4b9ae91779
TINYUSB_REF=aa0fc2e08f1c2dd6f026a431e8989357fbb4c5bf
MICROPYTHON_LIB_REF=8380c7bb8f9e5e5260e9539156742925e00366b2
MBEDTLS_REF=107ea89daaefb9867ea9121002fbbdf926780e98
PICOTOOL_REF=a7eb3988f0645239185fadb4e25d8279478c2dbb

HERE=$(cd "$(dirname "$0")" && pwd)
WORK=${WORK:-$HERE/../../build/rp2040}
OUT=${OUT:-$WORK/RPI_PICO-v1.28.0.uf2}
JOBS=${JOBS:-$(nproc)}
mkdir -p "$WORK"
WORK=$(cd "$WORK" && pwd)
# The exported trees are not git checkouts: keep git from finding an enclosing repository
# (this one), whose hash would otherwise be stamped into the firmware's version string.
# MicroPython then takes its version, v1.28.0, from py/mpconfig.h.
export GIT_CEILING_DIRECTORIES=$WORK

# export REPO REF DEST: write the tree of REF into DEST. Blobs a partial snapshot lacks are
# skipped with a warning (the pico-sdk snapshot here lacks src/rp2350/hardware_regs/RP2350.svd,
# which an RP2040 build never reads); everything else must be present.
export_tree() {
  local repo=$1 ref=$2 dest=$3
  local commit
  commit=$(git -C "$repo" rev-parse --verify "$ref^{commit}") || { echo "$repo lacks $ref" >&2; exit 1; }
  rm -rf "$dest"; mkdir -p "$dest"
  if git -C "$repo" archive "$commit" 2>/dev/null | tar -x -C "$dest"; then
    echo "$dest <- $repo @ $commit"; return
  fi
  echo "git archive failed for $repo (partial snapshot?): exporting blob by blob" >&2
  rm -rf "$dest"; mkdir -p "$dest"
  python3 - "$repo" "$commit" "$dest" <<'PY'
import os, subprocess, sys
repo, commit, dest = sys.argv[1:]
ls = subprocess.run(["git", "-C", repo, "ls-tree", "-r", "-z", commit],
                    check=True, capture_output=True).stdout.split(b"\0")
for entry in filter(None, ls):
    meta, path = entry.split(b"\t", 1)
    mode, kind, sha = meta.split()
    if kind != b"blob":
        continue  # submodules: filled in by this script where needed
    out = os.path.join(dest.encode(), path)
    os.makedirs(os.path.dirname(out), exist_ok=True)
    r = subprocess.run(["git", "-C", repo, "cat-file", "blob", sha], capture_output=True)
    if r.returncode:
        print("missing in snapshot, skipped:", path.decode(), file=sys.stderr)
        continue
    if mode == b"120000":
        os.symlink(r.stdout, out)
    else:
        with open(out, "wb") as f:
            f.write(r.stdout)
        if mode == b"100755":
            os.chmod(out, 0o755)
PY
  echo "$dest <- $repo @ $commit (blob by blob)"
}

# The build date in the banner is the release commit's date, so two builds match byte for byte.
SOURCE_DATE_EPOCH=$(git -C "$MICROPYTHON_SRC" log -1 --format=%ct "$MICROPYTHON_REF^{commit}")
export SOURCE_DATE_EPOCH

MP=$WORK/micropython
export_tree "$MICROPYTHON_SRC" "$MICROPYTHON_REF" "$MP"
export_tree "$PICO_SDK_SRC" "$PICO_SDK_REF" "$MP/lib/pico-sdk"
export_tree "$TINYUSB_SRC" "$TINYUSB_REF" "$MP/lib/tinyusb"
export_tree "$MICROPYTHON_LIB_SRC" "$MICROPYTHON_LIB_REF" "$MP/lib/micropython-lib"
export_tree "$MBEDTLS_SRC" "$MBEDTLS_REF" "$MP/lib/mbedtls"
export_tree "$PICOTOOL_SRC" "$PICOTOOL_REF" "$WORK/picotool-src"

# 1. picotool 2.2.0 without libusb (the rp2 build needs it to make the UF2; it never talks USB).
cmake -S "$WORK/picotool-src" -B "$WORK/picotool-build" -DPICO_SDK_PATH="$MP/lib/pico-sdk" \
  -DPICOTOOL_NO_LIBUSB=1 -DPICOTOOL_FLAT_INSTALL=1 -DCMAKE_INSTALL_PREFIX="$WORK/picotool-install"
make -C "$WORK/picotool-build" -j"$JOBS" install

# 2. mpy-cross, then the rp2 port for RPI_PICO.
make -C "$MP/mpy-cross" -j"$JOBS"
make -C "$MP/ports/rp2" BOARD=RPI_PICO -j"$JOBS" \
  CMAKE_ARGS="-Dpicotool_DIR=$WORK/picotool-install/picotool"

cp "$MP/ports/rp2/build-RPI_PICO/firmware.uf2" "$OUT"
echo "built $OUT"
sha256sum "$OUT"
