#!/usr/bin/env bash
# Install what the cross-platform verifiers need (toolchain verify --host node|browser|cpp), then
# prepare them: Debian's nodejs/npm, chromium, cmake and g++ when missing; the npm packages
# (onnxruntime-node, onnxruntime-web) and the C++ TorchScript verifier in $TOOLCHAIN_HOME/hosts.
# Idempotent: a few seconds when everything is already there. Run it with the project's python active.
set -euo pipefail
missing=()
command -v node >/dev/null || missing+=(nodejs)
command -v npm >/dev/null || missing+=(npm)
command -v chromium >/dev/null || command -v chromium-browser >/dev/null || missing+=(chromium)
command -v cmake >/dev/null || missing+=(cmake)
command -v g++ >/dev/null || missing+=(g++)
if [ ${#missing[@]} -gt 0 ]; then
  sudo=""
  [ "$(id -u)" -ne 0 ] && sudo="sudo"
  echo "setup-hosts: installing ${missing[*]}"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}" >/dev/null
fi
"${PYTHON:-python}" -m toolchain.hosts.install all
