#!/usr/bin/env bash
# Builds everything and runs the netns lab on the embedded default: a client,
# a router, the XDP load balancer and backend nodes with nginx pods; real HTTP
# through the VIP, answered by direct server return. The lab is its own binary
# (xlb-lab); it runs the `xlb` agent built beside it.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup.sh
cargo build --release --workspace
exec ./target/release/xlb-lab "$@"
