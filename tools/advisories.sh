#!/usr/bin/env bash
# tools/advisories.sh [SNAPSHOT] — checks Cargo.lock against the RustSec advisory database
# offline (`cargo deny check advisories`, policy in deny.toml). This machine cannot reach the
# database's git host, so the database is the snapshot in ../shared/advisory-db (or SNAPSHOT):
# it is copied to where cargo-deny keeps the database for the default URL, as a git
# repository with one commit on `main`, which `--offline` then reads. Any advisory fails.
set -euo pipefail
cd "$(dirname "$0")/.."
snapshot=${1:-../shared/advisory-db}
[ -d "$snapshot/crates" ] || { echo "tools/advisories.sh: no advisory database snapshot at $snapshot" >&2; exit 1; }
echo "=== advisory database: $(head -1 "$snapshot/SNAPSHOT" 2>/dev/null || echo "$snapshot (no SNAPSHOT file)")"
# cargo-deny's folder for https://github.com/rustsec/advisory-db (its default db-urls).
db=${CARGO_HOME:-$HOME/.cargo}/advisory-dbs/advisory-db-3157b0e258782691
rm -rf "$db"
mkdir -p "$db"
cp -R "$snapshot"/. "$db"/
git -C "$db" init -q -b main
git -C "$db" add -A
git -C "$db" -c user.name=distq-ci -c user.email=ci@distq.invalid commit -q -m "RustSec advisory-db snapshot"
cargo deny --offline check --hide-inclusion-graph advisories
