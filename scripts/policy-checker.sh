#!/usr/bin/env bash
# Builds the reference Go benchmark in bench/policy-checker (the kube-apiserver's own audit policy
# checker) into the cache outside the repository, and prints the binary's path.
set -euo pipefail
cd "$(dirname "$0")/.."
CACHE="${CLUSTERAUDIT_CACHE:-$HOME/.cache/clusteraudit}"
src_hash=$(cat bench/policy-checker/go.mod bench/policy-checker/main.go | sha256sum | cut -c1-16)
out="$CACHE/policy-checker/$src_hash"
if [[ -x "$out/policy-checker" ]]; then echo "$out/policy-checker"; exit 0; fi
mkdir -p "$out/src"
cp bench/policy-checker/go.mod bench/policy-checker/main.go "$out/src/"
(cd "$out/src" && GOFLAGS=-mod=mod go mod tidy >&2 && CGO_ENABLED=0 go build -trimpath -o "$out/policy-checker" .)
echo "$out/policy-checker"
