#!/usr/bin/env bash
# Builds the real Alertmanager and Prometheus (with promtool) the alerting tests run against, from the
# Go module proxy into a cache directory outside the repository, keyed by version, and reuses it when
# it is already there. Prints the directory holding the binaries on stdout; progress goes to stderr.
#
#   scripts/alerting.sh            # build or reuse, print the bin directory
#   CLUSTERAUDIT_CACHE=/some/dir scripts/alerting.sh
set -euo pipefail

ALERTMANAGER_VERSION="${ALERTMANAGER_VERSION:-v0.35.0}"
# Prometheus publishes its Go module as v0.<minor>.<patch> for the v3.<minor>.<patch> release.
PROMETHEUS_VERSION="${PROMETHEUS_VERSION:-v0.316.0}"
CACHE="${CLUSTERAUDIT_CACHE:-$HOME/.cache/clusteraudit}"
KEY="alertmanager-${ALERTMANAGER_VERSION}-prometheus-${PROMETHEUS_VERSION}"
OUT="$CACHE/alerting/$KEY"
BIN="$OUT/bin"

log() { echo "alerting: $*" >&2; }

if [[ -x "$BIN/alertmanager" && -x "$BIN/prometheus" && -x "$BIN/promtool" && -f "$OUT/.complete" ]]; then
  echo "$BIN"
  exit 0
fi

command -v go >/dev/null || { log "go is required to build Alertmanager and Prometheus"; exit 1; }
mkdir -p "$OUT"
# One build at a time per cache key, so parallel callers wait instead of racing.
exec 9>"$OUT/.lock"
flock 9
if [[ -f "$OUT/.complete" ]]; then echo "$BIN"; exit 0; fi

export GOFLAGS="-mod=mod -trimpath -buildvcs=false"
export CGO_ENABLED=0
started=$(date +%s)
mkdir -p "$BIN"

# A wrapper module of ours requiring <module>@<version>, carrying over the upstream go directive and
# its non-local replace directives (a dependency's replaces are ignored otherwise), so the build
# resolves the same versions the upstream release does.
wrapper() {
  local dir="$1" name="$2" module="$3" version="$4" upstream_gomod go_directive
  mkdir -p "$dir"
  upstream_gomod=$(cd "$dir" && go mod download -json "${module}@${version}" | sed -n 's/^[[:space:]]*"GoMod": "\(.*\)",\{0,1\}$/\1/p')
  [[ -f "$upstream_gomod" ]] || { log "could not download ${module} ${version}"; exit 1; }
  go_directive=$(awk '$1=="go"{print $2; exit}' "$upstream_gomod")
  {
    echo "module clusteraudit.dev/${name}"
    echo
    echo "go ${go_directive}"
    echo
    echo "require ${module} ${version}"
    echo
    awk '$1=="replace" && $0 !~ /=> *\./ {print}' "$upstream_gomod"
  } > "$dir/go.mod"
}

# The version `--version` prints, as upstream's promu sets it.
version_ldflags() {
  local v="$1" pkg=github.com/prometheus/common/version
  echo "-s -w -X ${pkg}.Version=${v#v} -X ${pkg}.Revision=0000000000000000000000000000000000000000 -X ${pkg}.Branch=HEAD -X ${pkg}.BuildUser=clusteraudit -X ${pkg}.BuildDate=19700101-00:00:00"
}

am_mod="$OUT/src/alertmanager"
wrapper "$am_mod" alertmanager github.com/prometheus/alertmanager "$ALERTMANAGER_VERSION"
# The module as published lacks the web UI's built assets (ui/app/dist, made by npm in a release
# build) that ui/web.go embeds: build from a copy of it holding a placeholder page instead. The API
# the tests use does not depend on it.
am_src="$am_mod/upstream"
rm -rf "$am_src"
cp -r "$(cd "$am_mod" && go mod download -json "github.com/prometheus/alertmanager@${ALERTMANAGER_VERSION}" | sed -n 's/^[[:space:]]*"Dir": "\(.*\)",\{0,1\}$/\1/p')" "$am_src"
chmod -R u+w "$am_src"
for ui in elm mantine; do
  mkdir -p "$am_src/ui/app/dist/$ui"
  echo '<!doctype html><title>Alertmanager</title><p>Built without the web UI; the API is at /api/v2.' > "$am_src/ui/app/dist/$ui/index.html"
done
echo "replace github.com/prometheus/alertmanager => ./upstream" >> "$am_mod/go.mod"
cat > "$am_mod/tools.go" <<'GO'
//go:build tools

package alertmanager

import _ "github.com/prometheus/alertmanager/cmd/alertmanager"
GO
log "building alertmanager ${ALERTMANAGER_VERSION}"
(cd "$am_mod" && go mod tidy -e >&2 \
  && go build -ldflags "$(version_ldflags "$ALERTMANAGER_VERSION")" -o "$BIN/alertmanager" github.com/prometheus/alertmanager/cmd/alertmanager)

# Prometheus without the builtinassets tag: no web UI, which the tests do not need (its API is there).
minor="${PROMETHEUS_VERSION#v0.}"; minor="${minor%%.*}"
patch="${PROMETHEUS_VERSION##*.}"
prometheus_release="$PROMETHEUS_VERSION"
if [[ "$minor" -ge 300 ]]; then prometheus_release="v3.$(( minor - 300 )).${patch}"; fi
prom_mod="$OUT/src/prometheus"
wrapper "$prom_mod" prometheus github.com/prometheus/prometheus "$PROMETHEUS_VERSION"
cat > "$prom_mod/tools.go" <<'GO'
//go:build tools

package prometheus

import (
	_ "github.com/prometheus/prometheus/cmd/prometheus"
	_ "github.com/prometheus/prometheus/cmd/promtool"
)
GO
(cd "$prom_mod" && go mod tidy -e >&2)
for cmd in prometheus promtool; do
  log "building ${cmd} ${prometheus_release} (module ${PROMETHEUS_VERSION}; the first build takes a while)"
  (cd "$prom_mod" && go build -ldflags "$(version_ldflags "$prometheus_release")" -o "$BIN/${cmd}" "github.com/prometheus/prometheus/cmd/${cmd}")
done

"$BIN/alertmanager" --version 2>&1 | head -1 >&2
"$BIN/prometheus" --version 2>&1 | head -1 >&2
touch "$OUT/.complete"
log "built in $(( $(date +%s) - started ))s into $BIN"
echo "$BIN"
