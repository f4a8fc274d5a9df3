#!/usr/bin/env bash
# The collector under a memory limit (a cgroup-v1 memory group, 300 MiB by default), with
# sustained ingest from a separate loadgen process; prints events/s, ack latency, peak RSS and
# whether the kernel had to kill it. Usage: scripts/collector-memory.sh [BINARY] [SECONDS] [MIB]
# (root; needs curl).
set -euo pipefail
bin=${1:-target/release/clusteraudit}
seconds=${2:-120}
cg=/sys/fs/cgroup/memory/clusteraudit-collector-rss
data=/tmp/rss-data
rm -rf "$data"; mkdir -p "$cg"
echo $((${3:-300}*1024*1024)) > "$cg/memory.limit_in_bytes"
echo 0 > "$cg/memory.swappiness" || true
echo 0 > "$cg/memory.max_usage_in_bytes" || true
port=19443
sh -c "echo \$\$ > $cg/cgroup.procs; exec $bin collector --insecure-dev --data-dir $data --listen 127.0.0.1:$port" > /tmp/rss-collector.log 2>&1 &
pid=$!
until curl -sf http://127.0.0.1:$port/readyz >/dev/null; do sleep 0.2; done
( while kill -0 $pid 2>/dev/null; do
    awk '/VmRSS|RssAnon|RssFile/{printf "%s %s ", $1, $2}' /proc/$pid/status
    echo "cg=$(cat $cg/memory.usage_in_bytes)"
    sleep 2
  done ) > /tmp/rss-samples.log &
sampler=$!
$bin loadgen --target http://127.0.0.1:$port/v1/webhook --events 100000000 --duration ${seconds}s --concurrency 4 --batch 400 | tee /tmp/rss-loadgen.log
sleep 1
echo "collector alive: $(kill -0 $pid 2>/dev/null && echo yes || echo no)"
echo "cgroup max usage: $(( $(cat $cg/memory.max_usage_in_bytes) / 1048576 )) MiB, failcnt $(cat $cg/memory.failcnt)"
grep -E "oom_kill|under_oom" $cg/memory.oom_control || true
sort -t' ' -k2 -n /tmp/rss-samples.log | awk '{print}' | tail -1
awk '{for(i=1;i<=NF;i++){if($i=="VmRSS:")r=$(i+1); if($i=="RssAnon:")a=$(i+1); if($i=="RssFile:")f=$(i+1)} if(r>mr)mr=r; if(a>ma)ma=a; if(f>mf)mf=f} END {printf "peak VmRSS %.1f MiB, peak RssAnon %.1f MiB, peak RssFile %.1f MiB over %d samples\n", mr/1024, ma/1024, mf/1024, NR}' /tmp/rss-samples.log
kill $pid; wait $pid 2>/dev/null || true; kill $sampler 2>/dev/null || true
rmdir "$cg" 2>/dev/null || true
