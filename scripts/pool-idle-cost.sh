#!/usr/bin/env bash
# Idle cost of N instances waiting for an assignment as pooled ones do (the provisioner's
# hardening flags, a state volume): CPU (cgroup v1 cpuacct over WINDOW s) and memory
# (memory.usage_in_bytes minus page cache) per container. Removes what it made.
# Usage: scripts/pool-idle-cost.sh IMAGE MODE [N] [WINDOW]
#   MODE busybox: the busybox sleep loop pooled instances used to wait in;
#        await:   /hotpocket run --await-assignment (an image built from this tree).
set -euo pipefail
IMAGE=$1; MODE=$2; N=${3:-10}; WINDOW=${4:-60}
if [ ! -d /sys/fs/cgroup/cpuacct/docker ]; then
  echo "needs cgroup v1 with Docker's cgroupfs driver (/sys/fs/cgroup/cpuacct/docker)" >&2
  exit 2
fi
ids=()
for i in $(seq 1 "$N"); do
  name=berth-idle-cost-$MODE-$i
  if [ "$MODE" = busybox ]; then
    cmd=(--entrypoint /bin/busybox "$IMAGE" sh -c "while [ ! -e '/state'/assigned ]; do /bin/busybox sleep 0.1 2>/dev/null || /bin/busybox sleep 1; done; set -a; . '/state'/assign.env; set +a; exec '/hotpocket' 'run' '--state-dir' '/state'")
  else
    cmd=(--entrypoint /hotpocket "$IMAGE" run --state-dir /state --await-assignment)
  fi
  ids+=("$(docker run -d --name "$name" --init --read-only --cap-drop ALL \
      --security-opt no-new-privileges:true --user 10001:10001 --tmpfs /tmp:size=16m \
      -v "$name:/state" "${cmd[@]}")")
done
sleep 5
cpu() { cat /sys/fs/cgroup/cpuacct/docker/"$1"/cpuacct.usage; }
declare -A start
for id in "${ids[@]}"; do start[$id]=$(cpu "$id"); done
sleep "$WINDOW"
total_ns=0; total_mem=0
for id in "${ids[@]}"; do
  d=$(( $(cpu "$id") - ${start[$id]} )); total_ns=$((total_ns + d))
  usage=$(cat /sys/fs/cgroup/memory/docker/"$id"/memory.usage_in_bytes)
  cache=$(awk '/^total_cache /{print $2}' /sys/fs/cgroup/memory/docker/"$id"/memory.stat)
  total_mem=$((total_mem + usage - cache))
done
running=$(docker ps -q --filter name=berth-idle-cost-$MODE | wc -l)
echo "mode=$MODE n=$N running=$running window=${WINDOW}s"
awk -v ns=$total_ns -v n=$N -v w=$WINDOW -v mem=$total_mem 'BEGIN{printf "per instance: CPU %.3f%% of one core, memory (rss, no cache) %.2f MiB\n", ns/1e9/w/n*100, mem/n/1048576}'
for i in $(seq 1 "$N"); do docker rm -f berth-idle-cost-$MODE-$i >/dev/null; docker volume rm berth-idle-cost-$MODE-$i >/dev/null; done
