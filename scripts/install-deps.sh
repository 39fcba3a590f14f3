#!/usr/bin/env bash
# Installs the Debian packages lorac needs, only when they are missing.
#   install-deps.sh build   compiler, CMake, cJSON, PCRE2, libmicrohttpd
#   install-deps.sh test    + PyTorch/NumPy for the reference tests, clang for fuzzing and
#                           ThreadSanitizer, npm for the OpenAI Node client test of lorac serve
#                           and the llama.cpp (node-llama-cpp) checks of the GGUF files
set -euo pipefail
pkgs=(build-essential cmake pkg-config libcjson-dev libpcre2-dev libmicrohttpd-dev)
if [ "${1:-build}" = test ]; then
  pkgs+=(python3 python3-torch python3-numpy clang libclang-rt-14-dev libomp-dev)
  # npm may come with a Node.js from outside Debian (NodeSource ships it in
  # its nodejs): any npm on PATH will do
  command -v npm >/dev/null || pkgs+=(npm)
fi
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "lorac: installing Debian packages: ${missing[*]}" >&2
  SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO=sudo
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
