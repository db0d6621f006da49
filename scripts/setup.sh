#!/usr/bin/env bash
# Installs what WanKit needs on Debian 12 (idempotent): oneDNN (libdnnl-dev) and FFmpeg.
# Swift 6.x must already be on PATH (https://swift.org/install).
set -euo pipefail
need=()
dpkg -s libdnnl-dev >/dev/null 2>&1 || need+=(libdnnl-dev)
command -v ffmpeg >/dev/null 2>&1 || need+=(ffmpeg)
if [ ${#need[@]} -gt 0 ]; then
  echo "setup: installing ${need[*]}" >&2
  SUDO=""
  [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update -qq
  $SUDO apt-get install -y -qq "${need[@]}" >/dev/null
fi
command -v swift >/dev/null 2>&1 || { echo "setup: swift not found on PATH; install Swift 6 first" >&2; exit 1; }
