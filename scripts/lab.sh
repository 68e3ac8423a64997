#!/usr/bin/env bash
# Builds everything and runs the netns lab on the embedded default (issue #9's
# seed: an nginx Deployment behind Service nginx-service, see
# lab/examples/nginx-service.yaml): a client, a router, the XDP load balancer
# and nodes with the workload's pods; real HTTP through the VIP, answered by
# direct server return, pod to pod, and to the ClusterIP translated at the
# socket. `--manifest FILE` runs your manifests, `--hold` keeps the lab up,
# `probe --port 80` prints a held lab's reachability matrix. The lab is its
# own binary (xlb-lab); it runs the `xlb` agent built beside it.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup.sh
cargo build --release --workspace
exec ./target/release/xlb-lab "$@"
