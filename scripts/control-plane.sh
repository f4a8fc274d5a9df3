#!/usr/bin/env bash
# Builds the real control plane the tests run against (etcd, kube-apiserver, kubectl, helm) from the
# Go module proxy into a cache directory outside the repository, keyed by version, and reuses it when
# it is already there. Prints the directory holding the binaries on stdout; progress goes to stderr.
#
#   scripts/control-plane.sh            # build or reuse, print the bin directory
#   CLUSTERAUDIT_CACHE=/some/dir scripts/control-plane.sh
set -euo pipefail

KUBERNETES_VERSION="${KUBERNETES_VERSION:-v1.36.3}"
ETCD_VERSION="${ETCD_VERSION:-v3.6.16}"
HELM_VERSION="${HELM_VERSION:-v3.21.4}"
CACHE="${CLUSTERAUDIT_CACHE:-$HOME/.cache/clusteraudit}"
KEY="k8s-${KUBERNETES_VERSION}-etcd-${ETCD_VERSION}-helm-${HELM_VERSION}"
OUT="$CACHE/control-plane/$KEY"
BIN="$OUT/bin"

log() { echo "control-plane: $*" >&2; }

if [[ -x "$BIN/kube-apiserver" && -x "$BIN/etcd" && -x "$BIN/kubectl" && -x "$BIN/helm" && -f "$OUT/.complete" ]]; then
  echo "$BIN"
  exit 0
fi

command -v go >/dev/null || { log "go is required to build the control plane"; exit 1; }
mkdir -p "$OUT"
# One build at a time per cache key, so parallel callers wait instead of racing.
exec 9>"$OUT/.lock"
flock 9
if [[ -f "$OUT/.complete" ]]; then echo "$BIN"; exit 0; fi

export GOFLAGS="-mod=mod -trimpath -buildvcs=false"
export CGO_ENABLED=0
started=$(date +%s)

# kube-apiserver and kubectl: a wrapper module of ours that requires k8s.io/kubernetes and replaces
# every staging module (which k8s.io/kubernetes itself points at ./staging/...) by its published
# v0.x version.
k8s_mod="$OUT/src/kubernetes"
mkdir -p "$k8s_mod" "$BIN"
minor="${KUBERNETES_VERSION#v1.}"; minor="${minor%%.*}"
patch="${KUBERNETES_VERSION##*.}"
staging_version="v0.${minor}.${patch}"
log "resolving k8s.io/kubernetes ${KUBERNETES_VERSION}"
upstream_gomod=$(cd "$k8s_mod" && go mod download -json "k8s.io/kubernetes@${KUBERNETES_VERSION}" | sed -n 's/^[[:space:]]*"GoMod": "\(.*\)",\{0,1\}$/\1/p')
[[ -f "$upstream_gomod" ]] || { log "could not download k8s.io/kubernetes ${KUBERNETES_VERSION}"; exit 1; }
go_directive=$(awk '$1=="go"{print $2; exit}' "$upstream_gomod")
{
  echo "module clusteraudit.dev/controlplane"
  echo
  echo "go ${go_directive}"
  echo
  echo "require k8s.io/kubernetes ${KUBERNETES_VERSION}"
  echo
  grep -oE 'k8s\.io/[a-z0-9-]+ => \./staging/src/k8s\.io/[a-z0-9-]+' "$upstream_gomod" \
    | awk -v v="$staging_version" '{print "replace " $1 " => " $1 " " v}' | sort -u
} > "$k8s_mod/go.mod"
cat > "$k8s_mod/tools.go" <<'GO'
//go:build tools

package controlplane

import (
	_ "k8s.io/kubernetes/cmd/kube-apiserver"
	_ "k8s.io/kubernetes/cmd/kubectl"
)
GO
log "tidying the wrapper module ($(grep -c '^replace' "$k8s_mod/go.mod") staging replacements to ${staging_version})"
(cd "$k8s_mod" && go mod tidy -e >&2)

git_commit="0000000000000000000000000000000000000000"
ldflags=""
for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
  ldflags+=" -X ${pkg}.gitVersion=${KUBERNETES_VERSION}"
  ldflags+=" -X ${pkg}.gitMajor=1 -X ${pkg}.gitMinor=${minor}"
  ldflags+=" -X ${pkg}.gitCommit=${git_commit} -X ${pkg}.gitTreeState=clean"
  ldflags+=" -X ${pkg}.buildDate=1970-01-01T00:00:00Z"
done
for cmd in kube-apiserver kubectl; do
  log "building ${cmd} ${KUBERNETES_VERSION} (the first build takes a while)"
  (cd "$k8s_mod" && go build -ldflags "-s -w ${ldflags}" -o "$BIN/${cmd}" "k8s.io/kubernetes/cmd/${cmd}")
done

# etcd: go.etcd.io/etcd/server/v3 is itself the etcd main package.
etcd_mod="$OUT/src/etcd"
mkdir -p "$etcd_mod"
cat > "$etcd_mod/go.mod" <<GOMOD
module clusteraudit.dev/etcd

go ${go_directive}

require go.etcd.io/etcd/server/v3 ${ETCD_VERSION}
GOMOD
cat > "$etcd_mod/tools.go" <<'GO'
//go:build tools

package etcd

import _ "go.etcd.io/etcd/server/v3"
GO
log "building etcd ${ETCD_VERSION}"
(cd "$etcd_mod" && go mod tidy -e >&2 && go build -ldflags "-s -w" -o "$BIN/etcd" go.etcd.io/etcd/server/v3)

# helm: renders the chart for the server-side dry-run tests.
helm_mod="$OUT/src/helm"
mkdir -p "$helm_mod"
cat > "$helm_mod/go.mod" <<GOMOD
module clusteraudit.dev/helm

go ${go_directive}

require helm.sh/helm/v3 ${HELM_VERSION}
GOMOD
cat > "$helm_mod/tools.go" <<'GO'
//go:build tools

package helm

import _ "helm.sh/helm/v3/cmd/helm"
GO
log "building helm ${HELM_VERSION}"
(cd "$helm_mod" && go mod tidy -e >&2 && go build -ldflags "-s -w -X helm.sh/helm/v3/internal/version.version=${HELM_VERSION}" -o "$BIN/helm" helm.sh/helm/v3/cmd/helm)

"$BIN/kube-apiserver" --version >&2
"$BIN/etcd" --version | head -1 >&2
touch "$OUT/.complete"
log "built in $(( $(date +%s) - started ))s into $BIN"
echo "$BIN"
