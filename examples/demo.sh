#!/usr/bin/env bash
# Shows pps-sidecar at work: the example legacy app behind the sidecar, then a signed, a forged and a
# duplicate delivery. Ports: app 13000, sidecar 18080, admin 19090 (override with APP_PORT, PORT, ADMIN_PORT).
set -euo pipefail
cd "$(dirname "$0")/.."
.ci/deps demo      # the build, curl and python3: neither kubectl nor Redis

APP_PORT=${APP_PORT:-13000}
PORT=${PORT:-18080}
ADMIN_PORT=${ADMIN_PORT:-19090}
export PPS_WEBHOOK_SECRET=${PPS_WEBHOOK_SECRET:-demo-secret-change-me}

echo "== building pps-sidecar"
cargo build --locked --quiet
bin=${CARGO_TARGET_DIR:-target}/debug/pps-sidecar
work=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$work"; }
trap cleanup EXIT

# The shipped example config, with the demo's ports.
sed -e "s/^listen = .*/listen = \"127.0.0.1:$PORT\"/" \
    -e "s/^admin_listen = .*/admin_listen = \"127.0.0.1:$ADMIN_PORT\"/" \
    -e "s/^address = .*/address = \"127.0.0.1:$APP_PORT\"/" \
    conf/sidecar.toml > "$work/sidecar.toml"
"$bin" check --config "$work/sidecar.toml"

APP_LISTEN=127.0.0.1:$APP_PORT python3 examples/legacy-app/app.py &
pids+=($!)
RUST_LOG=info,pingora_core=warn "$bin" run --config "$work/sidecar.toml" 2> "$work/sidecar.log" &
pids+=($!)

printf "== waiting for /readyz"
for _ in $(seq 1 100); do
  curl -sf "http://127.0.0.1:$ADMIN_PORT/readyz" >/dev/null 2>&1 && break
  printf "."; sleep 0.1
done
echo; curl -sS "http://127.0.0.1:$ADMIN_PORT/readyz"

printf '{"order":{"id":1001,"total":"12.50","currency":"EUR"}}' > "$work/order.json"
id=$(python3 -c 'import uuid; print(uuid.uuid4())')
url="http://127.0.0.1:$PORT/webhooks"
show() { echo; echo "== $1"; sh -c "$2" | sed -n '1p;/^X-Pps-Duplicate/p;$p'; }

signed=$("$bin" sign --body "$work/order.json" --secret-env PPS_WEBHOOK_SECRET --tenant OU1243 \
  --webhook-id "$id" --url "$url")
forged=$("$bin" sign --body "$work/order.json" --secret-value not-the-secret --tenant OU1243 --url "$url")

show "signed delivery: processed by the app" "$signed"
show "forged delivery: refused, the app never sees it" "$forged"
show "the same delivery again: answered from the cache, the app is not called" "$signed"

echo; echo "== the sidecar's access log"
# Access lines are written in batches, at most 100 ms after the request: wait for the three (2 s at most).
for _ in $(seq 20); do
  [ "$(grep -c 'target=access' "$work/sidecar.log")" -ge 3 ] && break
  sleep 0.1
done
grep 'target=access' "$work/sidecar.log" | sed 's/^\[[^]]*\] *//'
