#!/usr/bin/env bash
# Start the three-node example cluster on ports 5000-5002 with SQLite state under
# ./raft-state/, print which node leads, and stop every node on Ctrl-C.
set -euo pipefail

cd "$(dirname "$0")/.."
STATE_DIR=${STATE_DIR:-./raft-state}
PYTHON=${PYTHON:-python3}
mkdir -p "$STATE_DIR"
pids=()

stop_all() {
  echo
  echo "stopping the cluster..."
  for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  wait || true
  exit 0
}
trap stop_all INT TERM

for k in 0 1 2; do
  "$PYTHON" -m example_flask --cluster --port "500$k" --node-id "node$k" \
    --state-dir "$STATE_DIR" >"$STATE_DIR/node$k.log" 2>&1 &
  pids+=("$!")
  echo "node$k: http://localhost:500$k (log: $STATE_DIR/node$k.log)"
done

leader=""
while true; do
  current=""
  for k in 0 1 2; do
    body=$(curl -fsS "http://localhost:500$k/cluster" 2>/dev/null || true)
    if grep -Eq '"role": ?"leader"' <<<"$body"; then current="node$k (http://localhost:500$k)"; fi
  done
  if [[ -n "$current" && "$current" != "$leader" ]]; then
    leader=$current
    echo "$(date +%T) leader: $leader   (try: curl localhost:5000/health; kill a node; Ctrl-C stops all)"
  fi
  sleep 0.5
done
