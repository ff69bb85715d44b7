#!/usr/bin/env bash
# Installs the Debian packages the build and tests need, only those missing.
# Tools already on PATH (node, cmake, a C++ compiler) count as present whatever
# package provided them.
set -euo pipefail

need=()
for pkg in catch2 libcli11-dev nlohmann-json3-dev libeigen3-dev libpcre2-dev pkg-config; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || need+=("$pkg")
done
command -v cmake >/dev/null || need+=(cmake)
command -v g++ >/dev/null || need+=(g++)
command -v make >/dev/null || need+=(make)
command -v node >/dev/null || need+=(nodejs)
command -v npm >/dev/null || need+=(npm)

[ ${#need[@]} -eq 0 ] && exit 0
echo "deps: installing missing packages: ${need[*]}"
if [ "$(id -u)" -ne 0 ]; then
  echo "deps: not root; run: sudo apt-get install -y ${need[*]}" >&2
  exit 1
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -q
apt-get install -y -q --no-install-recommends "${need[@]}"
