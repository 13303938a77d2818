#!/usr/bin/env bash
# Measures, in one run on this machine:
#  1. ingest throughput of one generator client against `lambda demo` on the
#     embedded log (the baseline) and against `lambda ingest` on a Kafka-protocol
#     broker (tansu, in memory), as a ratio;
#  2. what serving's poll of a speed instance costs: the bytes of a full
#     snapshot against the bytes of one 250 ms delta, under load.
# Usage: infra/bench/roles.sh [seconds per run, default 15]
set -euo pipefail
cd "$(dirname "$0")/../.."
secs="${1:-15}"
target="${CARGO_TARGET_DIR_RELEASE:-$HOME/.cache/lambda-pipeline/release-target}"
CARGO_TARGET_DIR="$target" cargo build --release --locked --bin lambda >&2
lambda="$target/release/lambda"
work="$(mktemp -d)"
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_ok() { for _ in $(seq 300); do curl -fsS "$1" >/dev/null 2>&1 && return 0; sleep 0.1; done; echo "no answer from $1" >&2; exit 1; }
# One client, as fast as the server answers: a rate far above what it can take.
blast() {
  "$lambda" generate --target "$1" --rate 200000 --duration "${secs}s" --seed 7 --no-progress \
    --late-fraction 0 --duplicate-fraction 0 --malformed-fraction 0 2>/dev/null \
    | awk '/^sent/ { print $4 }'
}

# lambda ingest on tansu.
bport=$(free_port)
tansu broker --listener-url "tcp://127.0.0.1:$bport" --advertised-listener-url "tcp://127.0.0.1:$bport" \
  --storage-engine memory://tansu/ >/dev/null 2>&1 &
pids+=($!)
sleep 1
export LAMBDA_LOG_URL="kafka://127.0.0.1:$bport?probe_end=true"
iport=$(free_port)
RUST_LOG=warn "$lambda" ingest --listen "127.0.0.1:$iport" --data-dir "$work/ingest" >/dev/null 2>&1 &
pids+=($!)
wait_ok "http://127.0.0.1:$iport/healthz"

# 2. A speed instance under a steady 2000 lines/s
#    with event time 120 times faster than the wall (many windows open).
sport=$(free_port)
RUST_LOG=warn "$lambda" speed --listen "127.0.0.1:$sport" --data-dir "$work/speed" \
  --lake-url "file://$work/lake" >/dev/null 2>&1 &
pids+=($!)
wait_ok "http://127.0.0.1:$sport/healthz"
"$lambda" generate --target "http://127.0.0.1:$iport" --rate 2000 --speedup 120 --duration 20s --seed 8 --no-progress >/dev/null 2>&1 &
gen=$!
sleep 10
snap="http://127.0.0.1:$sport/internal/v1/speed"
curl -fsS "$snap?epoch=0&since=0" > "$work/full.json"
full=$(wc -c < "$work/full.json")
cursor=$(python3 -c 'import json,sys; s=json.load(open(sys.argv[1])); print(s["epoch"], s["seq"], len(s["windows"]))' "$work/full.json")
read -r epoch seq windows <<<"$cursor"
sleep 0.25
delta=$(curl -fsS "$snap?epoch=$epoch&since=$seq" | wc -c)
wait "$gen" || true


# 1. One client as fast as ingest answers: Kafka (tansu, with the speed instance
#    consuming), then the baseline: the demo on the embedded log (its speed layer
#    consuming in-process).
kafka=$(blast "http://127.0.0.1:$iport")

port=$(free_port)
RUST_LOG=warn "$lambda" demo --no-generator --listen "127.0.0.1:$port" --data-dir "$work/demo" \
  --batch-schedule '0 0 0 1 1 * 2099' >/dev/null 2>&1 &
pids+=($!)
wait_ok "http://127.0.0.1:$port/healthz"
embedded=$(blast "http://127.0.0.1:$port")
kill "${pids[-1]}"; wait "${pids[-1]}" 2>/dev/null || true

awk -v e="$embedded" -v k="$kafka" -v s="$secs" -v f="$full" -v d="$delta" -v w="$windows" 'BEGIN {
  printf "ingest, one client, %d s each: embedded log %d lines (%.0f/s), Kafka (tansu) %d lines (%.0f/s): Kafka/embedded = %.2f\n", s, e, e/s, k, k/s, k/e
  printf "speed poll: full snapshot %d bytes (%d windows), one 250 ms delta %d bytes: delta/full = %.3f\n", f, w, d, d/f
}'
