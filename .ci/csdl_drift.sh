#!/usr/bin/env bash
# CI: in a copy of the repository whose CSDL excerpt gains a runState member and a
# property of deviceManagementScriptDeviceState, `cargo check` must fail, naming both.
# (The check's rules are unit-tested in build/csdl.rs; this proves the build fails.)
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
copy=$(mktemp -d)
trap 'rm -rf "$copy"' EXIT

tar -C "$root" --exclude=./target --exclude=./.git --exclude=./.ci/node --exclude=./bench/out \
    -cf - . | tar -C "$copy" -xf -
python3 - "$copy/graph-metadata/runstates.xml" <<'EOF'
import sys
path = sys.argv[1]
text = open(path, encoding="utf-8").read()
edits = [
    ('<Member Name="notApplicable" Value="5" />',
     '<Member Name="notApplicable" Value="5" />\n        <Member Name="quarantined" Value="6" />'),
    ('<EntityType Name="deviceManagementScriptDeviceState" BaseType="graph.entity">',
     '<EntityType Name="deviceManagementScriptDeviceState" BaseType="graph.entity">\n'
     '        <Property Name="retryCount" Type="Edm.Int32" Nullable="false" />'),
]
for old, new in edits:
    assert text.count(old) == 1, old
    text = text.replace(old, new)
open(path, "w", encoding="utf-8").write(text)
EOF

# Cargo's artifact hashes do not depend on the package's path, so the copy reuses
# every dependency in target/ (and the next build here reruns build.rs once).
status=0
CARGO_TARGET_DIR="$root/target" cargo check --locked --lib --manifest-path "$copy/Cargo.toml" \
    >"$copy/check.log" 2>&1 || status=$?
if [ "$status" -eq 0 ]; then
  echo "cargo check passed on an excerpt the gateway disagrees with" >&2
  exit 1
fi
for expected in 'runState member `quarantined`' 'deviceManagementScriptDeviceState.retryCount'; do
  if ! grep -qF "$expected" "$copy/check.log"; then
    echo "cargo check failed without naming $expected:" >&2
    cat "$copy/check.log" >&2
    exit 1
  fi
done
grep -F 'disagrees with the gateway' "$copy/check.log"
echo "cargo check fails on the edited excerpt, naming both"
