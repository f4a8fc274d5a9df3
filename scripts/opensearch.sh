#!/usr/bin/env bash
# Installs the real OpenSearch the tests run against (the plain "integ-test" zip from Maven Central:
# no bundled JDK, no security plugin) and reuses it when it is already there. Prints the install's
# directory (OPENSEARCH_HOME) on stdout; progress goes to stderr.
#
#   scripts/opensearch.sh               # download or reuse, extract or reuse, print the install
#
# The zip is kept in the user's cache. The install goes to a shared cache, /var/cache/clusteraudit
# when run as root: OpenSearch refuses to run as root, so the test kit runs it as nobody, who cannot
# reach anything under /root. `jdk` in the install links to a Java it supports, so that a JAVA_HOME
# set for other tools (a newer Java, without the security manager OpenSearch 2 needs) never applies.
set -euo pipefail

OPENSEARCH_VERSION="${OPENSEARCH_VERSION:-2.19.6}"
# From Maven Central's opensearch-2.19.6.zip.sha512; another version is checked against its own.
PINNED_SHA512_2_19_6=8adbfaa13162b8d42b388ece6b39bfb7f1a349ab9c128d4eced78ba1dd43b5a10850b43b8aac19fa5ab11f4d5c355ddf6f6617514d6112b0936a1903005d1d36
CACHE="${CLUSTERAUDIT_CACHE:-$HOME/.cache/clusteraudit}"
NAME="opensearch-${OPENSEARCH_VERSION}"
ZIP="$CACHE/opensearch/$NAME.zip"
URL="https://repo1.maven.org/maven2/org/opensearch/distribution/integ-test-zip/opensearch/${OPENSEARCH_VERSION}/$NAME.zip"
if [[ $(id -u) == 0 ]]; then
  INSTALL_ROOT="${CLUSTERAUDIT_SHARED_CACHE:-/var/cache/clusteraudit}"
else
  INSTALL_ROOT="${CLUSTERAUDIT_SHARED_CACHE:-$CACHE/opensearch}"
fi
OUT="$INSTALL_ROOT/$NAME"

log() { echo "opensearch: $*" >&2; }

if [[ -f "$OUT/.complete" && -x "$OUT/bin/opensearch" && -x "$OUT/jdk/bin/java" ]]; then
  echo "$OUT"
  exit 0
fi

mkdir -p "$INSTALL_ROOT" "$(dirname "$ZIP")"
chmod a+rx "$INSTALL_ROOT"
# One install at a time, so parallel callers wait instead of racing.
exec 9>"$INSTALL_ROOT/.$NAME.lock"
flock 9
if [[ -f "$OUT/.complete" && -x "$OUT/jdk/bin/java" ]]; then echo "$OUT"; exit 0; fi
started=$(date +%s)

as_root() { if [[ $(id -u) == 0 ]]; then "$@"; else sudo "$@"; fi; }
apt_install() {
  log "installing $* with apt-get"
  as_root apt-get update -qq >&2
  DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq "$@" >&2
}

# The Java major version of a java binary ("17"), or nothing.
java_major() {
  "$1" -version 2>&1 | sed -n '1s/.*version "\([0-9]*\)[."].*/\1/p'
}
# OpenSearch 2.19 runs on Java 11, 17 and 21; 17 first, the version it is built and tested with.
supported_java_home() {
  local candidates=() java major
  [[ -n "${OPENSEARCH_JAVA_HOME:-}" ]] && candidates+=("$OPENSEARCH_JAVA_HOME/bin/java")
  if command -v java >/dev/null; then candidates+=("$(readlink -f "$(command -v java)")"); fi
  [[ -n "${JAVA_HOME:-}" ]] && candidates+=("$JAVA_HOME/bin/java")
  for want in 17 21 11; do
    for java in "${candidates[@]}" /usr/lib/jvm/*/bin/java; do
      [[ -x "$java" ]] || continue
      major=$(java_major "$java")
      if [[ "$major" == "$want" ]]; then
        dirname "$(dirname "$(readlink -f "$java")")"
        return 0
      fi
    done
  done
  return 1
}

java_home=$(supported_java_home || true)
if [[ -z "$java_home" ]]; then
  apt_install openjdk-17-jre-headless
  java_home=$(supported_java_home)
fi
log "using Java $(java_major "$java_home/bin/java") at $java_home"

if [[ ! -f "$ZIP" ]]; then
  log "downloading $URL"
  curl -fsSL --retry 3 -o "$ZIP.part" "$URL"
  mv "$ZIP.part" "$ZIP"
fi
if [[ "$OPENSEARCH_VERSION" == 2.19.6 ]]; then
  expected=$PINNED_SHA512_2_19_6
else
  expected=$(curl -fsSL --retry 3 "$URL.sha512" | awk '{print $1}')
fi
actual=$(sha512sum "$ZIP" | awk '{print $1}')
if [[ "$actual" != "$expected" ]]; then
  log "$ZIP has SHA-512 $actual, Maven Central says $expected; removing it, run again to download it anew"
  rm -f "$ZIP"
  exit 1
fi

staging="$INSTALL_ROOT/.$NAME.staging"
rm -rf "$staging" "$OUT"
mkdir -p "$staging"
if command -v unzip >/dev/null; then
  unzip -q "$ZIP" -d "$staging"
elif command -v python3 >/dev/null; then
  python3 -m zipfile -e "$ZIP" "$staging"
elif command -v jar >/dev/null; then
  (cd "$staging" && jar xf "$ZIP")
else
  apt_install unzip
  unzip -q "$ZIP" -d "$staging"
fi
# python's zipfile and jar drop the modes the zip stores, and the zip's own modes keep config/ from
# other users.
chmod -R u+w,go-w,a+rX "$staging/$NAME"
find "$staging/$NAME/bin" -type f ! -name '*.bat' ! -name '*.exe' -exec chmod a+x {} +
ln -s "$java_home" "$staging/$NAME/jdk"
mv "$staging/$NAME" "$OUT"
rmdir "$staging"

if [[ $(id -u) == 0 ]] && command -v setpriv >/dev/null; then
  # The user the test kit runs OpenSearch as must reach the install and the Java it links to: the
  # launcher's own Java version check, run as that user, reads both.
  setpriv --reuid=65534 --regid=65534 --clear-groups -- "$OUT/jdk/bin/java" -cp "$OUT/lib/*" \
    org.opensearch.tools.java_version_checker.JavaVersionChecker \
    || { log "nobody cannot run OpenSearch from $OUT with $java_home"; exit 1; }
fi
touch "$OUT/.complete"
log "installed in $(( $(date +%s) - started ))s into $OUT"
echo "$OUT"
