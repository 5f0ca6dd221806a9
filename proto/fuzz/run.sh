#!/usr/bin/env bash
# Fuzzes archon-proto's parsers: runs the `parse` target for N seconds (default 60), starting from
# the checked-in seeds, with overflow checks on. Installs cargo-fuzz when it is missing. Exits
# non-zero when the fuzzer finds a crash; the input is then in proto/fuzz/artifacts/parse/.
#
#   bash proto/fuzz/run.sh [SECONDS]
#
# New inputs go to proto/fuzz/corpus/parse (not checked in), so later runs start further on.
set -euo pipefail

secs="${1:-60}"
case "$secs" in
'' | *[!0-9]*)
    echo "usage: $0 [SECONDS]" >&2
    exit 100
    ;;
esac

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"

if ! cargo +nightly --version >/dev/null 2>&1; then
    echo "run.sh: the nightly toolchain is missing; installing it" >&2
    rustup toolchain install nightly --profile minimal
fi
if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "run.sh: cargo-fuzz is missing; installing it" >&2
    cargo install cargo-fuzz --locked
fi

mkdir -p "$here/corpus/parse"
# -a: debug assertions and overflow checks, so that arithmetic overflow is a crash as in debug
# builds of archon. parse.dict gives the fuzzer the protocol's words. The first corpus directory
# receives new inputs; seeds/ is only read.
exec cargo +nightly fuzz run --fuzz-dir "$here" -a parse \
    "$here/corpus/parse" "$here/seeds" -- \
    -max_total_time="$secs" -dict="$here/parse.dict" -timeout=10 -rss_limit_mb=2048 \
    -print_final_stats=1
