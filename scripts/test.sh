#!/usr/bin/env bash
# Builds everything and runs every test tier: formatting and lints (rustfmt,
# clippy, clang-format), unit tests, privileged BPF packet tests, control-plane
# golden tests and the end-to-end netns lab tests. Needs root.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup.sh

echo "== rustfmt"
cargo fmt --all -- --check
echo "== clang-format"
clang-format --dry-run --Werror lb/bpf/*.h lb/probe/*.c xdp/*.[ch] tc/*.[ch] sock/*.[ch] testkit/bpf/*.c
echo "== clippy"
cargo clippy --workspace --all-targets --quiet -- -D warnings
echo "== build"
cargo build --workspace --all-targets --release
echo "== tests"
# Every tier, including the privileged BPF and netns ones (they fail loudly
# without root). Tests that build namespaces use unique names per process.
cargo test --workspace --release --no-fail-fast -- --test-threads=2
