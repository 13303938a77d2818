#!/usr/bin/env bash
# Runs every test of lambda-pipeline. This is the README's test command and
# what CI runs (.ci/run). It installs what the tests need when it is missing,
# so it works on a fresh machine.
#
# The build goes to $CARGO_TARGET_DIR (default ~/.cache/lambda-pipeline/target),
# outside the clone, so later runs are incremental: the first one compiles
# DuckDB's bundled C++ (~30 minutes on 2 cores), later ones take minutes.
set -euo pipefail
cd "$(dirname "$0")/.."

export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/lambda-pipeline/target}"
export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"

need() { command -v "$1" >/dev/null 2>&1; }

if ! need cargo; then
  echo "cargo is missing: install Rust from rustup (https://rustup.rs) first" >&2
  exit 1
fi
# DuckDB's bundled build needs a C++ compiler.
if ! need c++; then
  echo "installing a C++ compiler for DuckDB's bundled build"
  apt-get update -qq && apt-get install -y -qq g++ >/dev/null
fi
# rdkafka is built with its `ssl` feature (TLS and SASL/SCRAM): librdkafka links
# the system OpenSSL, whose headers openssl-sys finds through pkg-config.
if ! need pkg-config || ! pkg-config --exists openssl; then
  echo "installing libssl-dev and pkg-config (rdkafka's ssl feature builds against OpenSSL)"
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq libssl-dev pkg-config >/dev/null
fi

# Spark Connect's Rust client (apache-spark-connect) compiles its gRPC protocol
# with protoc at build time.
if ! need protoc; then
  echo "installing protobuf-compiler (the Spark Connect client's build runs protoc)"
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq protobuf-compiler >/dev/null
fi

# Headless Chromium for the dashboard's browser test (Debian's package).
# The lesson's commands (tests/guide.rs) use curl and pkill.
if ! command -v curl >/dev/null || ! command -v pkill >/dev/null; then
  echo "installing curl and procps (the guide's commands use them)"
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq curl procps >/dev/null
fi
if [ ! -x /usr/bin/chromium ]; then
  echo "installing chromium (headless browser) from Debian"
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
fi

# A real S3-compatible server for the lake tests (they start it themselves).
if ! need moto_server; then
  echo "installing moto (S3 server) from PyPI"
  python3 -m pip install -q 'moto[server]'
fi

# A real Kafka-protocol broker for the Kafka backend tests (they start it
# themselves). Built once into its own target dir, at opt-level 1: a test
# broker needs no more, and its cold build is one of the longest steps of a
# CI run (7 minutes on 2 cores, 16 at cargo install's default opt-level 3).
if ! need tansu; then
  echo "installing tansu (Kafka-protocol broker) from crates.io"
  CARGO_PROFILE_RELEASE_OPT_LEVEL=1 \
    cargo install tansu --version 0.6.0 --locked --features dynostore \
    --target-dir "$HOME/.cache/lambda-pipeline/tansu-target"
fi

# A Python virtualenv for the tests that use outside tools (schemathesis too, below):
# docker-compose 1.29 (validates docker-compose.yml against the compose schema
# and resolves it; its PyYAML pin needs Cython < 3 to build), confluent-kafka
# (a third-party Kafka client) and pyarrow (reads the lake as it is).
venv="$HOME/.cache/lambda-pipeline/venv"
if [ ! -x "$venv/bin/python" ]; then
  echo "creating $venv"
  if ! python3 -m venv "$venv" 2>/dev/null; then
    apt-get update -qq && apt-get install -y -qq python3-venv >/dev/null
    python3 -m venv "$venv"
  fi
fi
if [ ! -x "$venv/bin/docker-compose" ]; then
  echo "installing docker-compose into $venv from PyPI"
  "$venv/bin/pip" install -q 'cython<3' wheel setuptools
  "$venv/bin/pip" install -q --no-build-isolation 'pyyaml==5.4.1'
  "$venv/bin/pip" install -q 'docker-compose==1.29.2'
fi
if ! "$venv/bin/python" -c 'import confluent_kafka, pyarrow' 2>/dev/null; then
  echo "installing confluent-kafka and pyarrow into $venv from PyPI"
  "$venv/bin/pip" install -q 'confluent-kafka==2.16.1' 'pyarrow==26.0.1'
fi
# schemathesis fuzzes the demo's API from its /openapi.json (tests/openapi.rs).
if [ ! -x "$venv/bin/schemathesis" ]; then
  echo "installing schemathesis into $venv from PyPI"
  "$venv/bin/pip" install -q 'schemathesis==4.32.5'
fi
# A real Spark standalone cluster for the Spark batch engine's tests
# (batch-layer/tests/spark.rs starts a master, two workers and a Connect server
# from this distribution: pyspark 4.x ships all of Spark's jars and scripts).
if ! "$venv/bin/python" -c 'import pyspark, grpc' 2>/dev/null; then
  echo "installing pyspark[connect] (the Spark distribution, ~450 MB) into $venv from PyPI"
  "$venv/bin/pip" install -q 'pyspark[connect]==4.3.0'
fi
export LAMBDA_TEST_VENV="$venv"

# Keep the cached target dir from growing without bound: test executables
# (each a few hundred MB with DuckDB linked in) not rebuilt for a day are
# stale, and incremental state is of no use to a test run.
export CARGO_INCREMENTAL=0
if [ -d "$CARGO_TARGET_DIR/debug/deps" ]; then
  find "$CARGO_TARGET_DIR/debug/deps" -maxdepth 1 -type f -perm -u+x -mtime +1 \
    ! -name '*.so' ! -name '*.rlib' ! -name '*.rmeta' -delete
  rm -rf "$CARGO_TARGET_DIR/debug/incremental"
fi

echo "== cargo fmt --check"
cargo fmt --all -- --check

echo "== cargo test (target dir $CARGO_TARGET_DIR)"
# Always the whole workspace: building a subset resolves DuckDB's features
# differently and recompiles its C++. `spark`: the Spark batch engine (and
# its tests on a real cluster).
log="$(mktemp)"
trap 'rm -f "$log"' EXIT
set +e
cargo test --workspace --features spark --locked --no-fail-fast 2>&1 | tee "$log"
status=${PIPESTATUS[0]}
set -e

# One closing line with the totals over every test binary (cargo's own last
# line is the doc-tests' count, which is usually zero).
awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($(i+1) ~ /^passed;?$/) p += $i; if ($(i+1) ~ /^failed;?$/) f += $i } }
     END { printf "tests: %d passed, %d failed\n", p, f }' "$log"
exit "$status"
