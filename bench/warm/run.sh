#!/usr/bin/env bash
# bench/warm: warm-invocation throughput and latency of lampyr against a bare
# Node.js http server that calls the same handler module.
#
#   bench/warm/run.sh                 # DURATION=10s per measured run
#   DURATION=5s ROUNDS=3 bench/warm/run.sh
#
# Environment:
#   DURATION  length of each measured wrk run (default 10s)
#   WARMUP    length of the warm-up wrk run per target and load shape (default 3s)
#   ROUNDS    measured runs per target and load shape, alternating
#             lampyr, bare, lampyr, bare, ... (default 3; the table shows the
#             run with the median requests/s)
#   OUT       report file (default docs/benchmarks.md in the repository)
#   WRK_OUT   if set, a directory where every raw wrk output is kept
#
# Builds lampyr in release mode, starts it on a free port with a temporary data
# directory, deploys the hello function, starts bench/warm/bare-node.js on the
# same handler file, runs wrk against both, and rewrites the
# `<!-- bench:warm:start -->` ... `<!-- bench:warm:end -->` section of OUT.
# Exits non-zero if wrk sees non-2xx responses or socket errors.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"
DURATION="${DURATION:-10s}"
WARMUP="${WARMUP:-3s}"
ROUNDS="${ROUNDS:-3}"
OUT="${OUT:-$ROOT/docs/benchmarks.md}"
BIN="$ROOT/target/release/lampyr"
MARK_START='<!-- bench:warm:start -->'
MARK_END='<!-- bench:warm:end -->'

log() { printf '[bench/warm] %s\n' "$*" >&2; }
die() { printf '[bench/warm] error: %s\n' "$*" >&2; exit 1; }

# ------------------------------------------------------------------ tools
command -v wrk >/dev/null 2>&1 ||
  die "wrk is not installed. Install it with: apt-get install -y wrk  (run 'apt-get update' first if needed)"
command -v node >/dev/null 2>&1 ||
  die "node (Node.js) is not installed; lampyr's nodejs runtime and the baseline need it (apt-get install -y nodejs)"
command -v curl >/dev/null 2>&1 || die "curl is not installed (apt-get install -y curl)"
command -v cargo >/dev/null 2>&1 || die "cargo is not installed; it is needed to build lampyr"
[[ "$ROUNDS" =~ ^[1-9][0-9]*$ ]] || die "ROUNDS must be a positive integer, got '$ROUNDS'"

# ------------------------------------------------------------------ cleanup
WORK="$(mktemp -d "${TMPDIR:-/tmp}/lampyr-bench-warm.XXXXXX")"
PIDS=()
# alive PID: the process exists and is not a zombie.
alive() {
  kill -0 "$1" 2>/dev/null && [[ "$(awk '{ print $3 }' "/proc/$1/stat" 2>/dev/null)" != Z ]]
}
cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  local pid i children=()
  # lampyr's function instances are its child processes: note them so that
  # none outlives the run.
  for pid in "${PIDS[@]}"; do
    children+=($(pgrep -P "$pid" 2>/dev/null || true))
  done
  for pid in "${PIDS[@]}"; do
    kill -TERM "$pid" 2>/dev/null || true
  done
  for pid in "${PIDS[@]}" "${children[@]}"; do
    # Give each process up to 5 s to stop, then kill it.
    for i in $(seq 50); do
      alive "$pid" || break
      sleep 0.1
    done
    if alive "$pid"; then
      log "process $pid did not stop on SIGTERM; killing it"
      kill -KILL "$pid" 2>/dev/null || true
    fi
    wait "$pid" 2>/dev/null || true
  done
  if [[ $rc -ne 0 && -n "${KEEP_ON_FAILURE:-}" ]]; then
    log "keeping $WORK for inspection"
  else
    rm -rf "$WORK"
  fi
  exit "$rc"
}
trap cleanup EXIT
trap 'log "command failed at line $LINENO: $BASH_COMMAND"' ERR
trap 'exit 130' INT
trap 'exit 143' TERM

# wait_for_line FILE PID PATTERN SECONDS: prints the first line of FILE that
# matches PATTERN (extended regex), failing if PID exits or time runs out.
wait_for_line() {
  local file="$1" pid="$2" pattern="$3" secs="$4"
  local deadline=$((SECONDS + secs)) line
  while ((SECONDS < deadline)); do
    line="$(grep -m1 -E "$pattern" "$file" 2>/dev/null || true)"
    if [[ -n "$line" ]]; then
      printf '%s\n' "$line"
      return 0
    fi
    kill -0 "$pid" 2>/dev/null || { log "process $pid exited; its output:"; cat "$file" >&2; return 1; }
    sleep 0.05
  done
  log "timed out after ${secs}s waiting for /$pattern/ in $file:"
  cat "$file" >&2
  return 1
}

# ------------------------------------------------------------------ build
log "building lampyr (cargo build --release)"
(cd "$ROOT" && cargo build --release) >&2
[[ -x "$BIN" ]] || die "$BIN was not built"

# ------------------------------------------------------------------ lampyr
mkdir -p "$WORK/data" "$WORK/fn/hello"
log "starting lampyr (data dir $WORK/data)"
"$BIN" serve --listen 127.0.0.1:0 --data-dir "$WORK/data" --log-format json \
  </dev/null >"$WORK/lampyr.out" 2>"$WORK/lampyr.log" &
PIDS+=($!)
line="$(wait_for_line "$WORK/lampyr.log" "${PIDS[-1]}" 'lampyr listening on http://127\.0\.0\.1:[0-9]+' 60)"
LAMPYR_BASE="$(grep -oE 'http://127\.0\.0\.1:[0-9]+' <<<"$line" | head -n1)"
log "lampyr is listening on $LAMPYR_BASE"

cat >"$WORK/fn/hello/lampyr.toml" <<'EOF'
name = "hello"
runtime = "nodejs"
handler = "index.handler"
idle_timeout = "10m"
max_instances = 1
concurrency = 64
EOF
cat >"$WORK/fn/hello/index.js" <<'EOF'
exports.handler = async (event) => ({ statusCode: 200, headers: { "content-type": "text/plain" }, body: "Hello World\n" });
EOF

# The same handler with the manifest every new function gets (concurrency = 1,
# max_instances = 10): one request at a time per instance.
mkdir -p "$WORK/fn/hello-default"
cp "$WORK/fn/hello/index.js" "$WORK/fn/hello-default/index.js"
printf 'name = "hello-default"\nruntime = "nodejs"\nhandler = "index.handler"\n' >"$WORK/fn/hello-default/lampyr.toml"

for fn in hello hello-default; do
  log "deploying $fn"
  LAMPYR_URL="$LAMPYR_BASE" LAMPYR_DATA_DIR="$WORK/data" "$BIN" deploy "$WORK/fn/$fn" >"$WORK/deploy.out" 2>"$WORK/deploy.err" ||
    { cat "$WORK/deploy.err" >&2; die "lampyr deploy $fn failed"; }
done
LAMPYR_URL_FN="$LAMPYR_BASE/fn/hello"
DEFAULT_URL_FN="$LAMPYR_BASE/fn/hello-default"

# ------------------------------------------------------------------ bare node
log "starting the bare Node.js server on the same handler file"
node "$HERE/bare-node.js" 0 "$WORK/fn/hello/index.js" handler \
  </dev/null >"$WORK/bare.log" 2>&1 &
PIDS+=($!)
line="$(wait_for_line "$WORK/bare.log" "${PIDS[-1]}" 'bare-node listening on http://127\.0\.0\.1:[0-9]+' 30)"
BARE_URL="$(grep -oE 'http://127\.0\.0\.1:[0-9]+' <<<"$line" | head -n1)/fn/hello"
log "bare node is listening on $BARE_URL"

# ------------------------------------------------------------------ warm
# check_hello URL: one GET that must answer 200 "Hello World\n"; prints the
# x-lampyr-start header (empty for the bare server).
check_hello() {
  local url="$1" code
  code="$(curl -sS -o "$WORK/body" -D "$WORK/headers" -w '%{http_code}' "$url")" ||
    die "GET $url failed"
  [[ "$code" == 200 ]] || die "GET $url answered $code: $(head -c 500 "$WORK/body")"
  [[ "$(cat "$WORK/body"; echo x)" == $'Hello World\nx' ]] ||
    die "GET $url answered an unexpected body: $(head -c 500 "$WORK/body")"
  tr -d '\r' <"$WORK/headers" | awk -F': ' 'tolower($1) == "x-lampyr-start" { print $2 }'
}
for i in 1 2 3 4 5; do
  start="$(check_hello "$LAMPYR_URL_FN")"
  log "lampyr warm-up request $i: x-lampyr-start=$start"
  check_hello "$DEFAULT_URL_FN" >/dev/null
  check_hello "$BARE_URL" >/dev/null
done
[[ "$start" == warm ]] || die "lampyr's instance is still not warm after 5 requests (x-lampyr-start=$start)"

# ------------------------------------------------------------------ wrk
# run_wrk NAME THREADS CONNS DURATION URL: runs wrk, checks for errors,
# cross-checks the text output against report.lua's exact numbers, and
# prints "rps p50_ms p99_ms requests duration_s".
run_wrk() {
  local name="$1" threads="$2" conns="$3" dur="$4" url="$5"
  local raw="$WORK/wrk-$name.txt"
  if ! wrk -t"$threads" -c"$conns" -d"$dur" --latency -s "$HERE/report.lua" "$url" >"$raw" 2>&1; then
    cat "$raw" >&2
    die "wrk failed against $url"
  fi
  cp "$raw" "$RAW_DIR/$name.txt"
  awk -v name="$name" -v url="$url" '
    function ms(s,   v, u) {
      v = s + 0; u = s; sub(/^[0-9.]+/, "", u)
      if (u == "us") return v / 1000
      if (u == "ms") return v
      if (u == "s")  return v * 1000
      if (u == "m")  return v * 60000
      if (u == "h")  return v * 3600000
      printf "cannot parse the time %s\n", s > "/dev/stderr"; exit 2
    }
    function near(a, b) { d = a - b; if (d < 0) d = -d; return d <= 0.006 || d <= 0.005 * (a > b ? a : b) }
    $1 == "50%" { t50 = ms($2) }
    $1 == "99%" { t99 = ms($2) }
    $1 == "Requests/sec:" { trps = $2 + 0 }
    /^ *Non-2xx or 3xx responses:/ { non2xx = $NF + 0 }
    /^ *Socket errors:/ { sockerr = $0 }
    $1 == "BENCH" {
      for (i = 2; i <= NF; i++) { split($i, kv, "="); b[kv[1]] = kv[2] + 0 }
      seen = 1
    }
    END {
      if (!seen) { printf "%s: no BENCH line from report.lua\n", name > "/dev/stderr"; exit 2 }
      errs = b["connect"] + b["read"] + b["write"] + b["timeout"]
      if (non2xx > 0 || b["status"] > 0) {
        printf "%s: wrk saw %d non-2xx/3xx responses (status errors %d) from %s\n", name, non2xx, b["status"], url > "/dev/stderr"; exit 3
      }
      if (errs > 0 || sockerr != "") {
        printf "%s: wrk saw socket errors against %s: connect %d, read %d, write %d, timeout %d %s\n", name, url, b["connect"], b["read"], b["write"], b["timeout"], sockerr > "/dev/stderr"; exit 3
      }
      if (b["requests"] <= 0 || b["duration_us"] <= 0) { printf "%s: no requests completed\n", name > "/dev/stderr"; exit 3 }
      rps = b["requests"] / (b["duration_us"] / 1e6)
      p50 = b["p50_us"] / 1000; p99 = b["p99_us"] / 1000
      # The exact numbers must agree with the text wrk printed (2 decimals).
      if (!near(rps, trps) || !near(p50, t50) || !near(p99, t99)) {
        printf "%s: report.lua (%.2f req/s, p50 %.3f ms, p99 %.3f ms) disagrees with wrk text (%.2f req/s, p50 %.3f ms, p99 %.3f ms)\n", name, rps, p50, p99, trps, t50, t99 > "/dev/stderr"; exit 4
      }
      printf "%.2f %.3f %.3f %d %.3f\n", rps, p50, p99, b["requests"], b["duration_us"] / 1e6
    }' "$raw" || { cat "$raw" >&2; die "wrk run $name against $url failed its checks"; }
}

RAW_DIR="${WRK_OUT:-$WORK/raw}"
mkdir -p "$RAW_DIR"
RESULTS="$WORK/results.txt" # shape target round rps p50 p99 requests duration
: >"$RESULTS"
# Load shapes, as THREADS:CONNECTIONS for wrk. wrk shares the machine with
# the server being measured, so its threads take CPU from that server: one
# thread drives 16 connections without being the bottleneck, and the
# two-thread shape shows the effect of a load generator competing harder.
SHAPES=(1:1 1:16 2:16)
for shape in "${SHAPES[@]}"; do
  threads="${shape%%:*}" conns="${shape##*:}"
  key="t${threads}c${conns}"
  log "wrk -t$threads -c$conns: warm-up ${WARMUP} per target"
  run_wrk "warmup-$key-lampyr" "$threads" "$conns" "$WARMUP" "$LAMPYR_URL_FN" >/dev/null
  run_wrk "warmup-$key-default" "$threads" "$conns" "$WARMUP" "$DEFAULT_URL_FN" >/dev/null
  run_wrk "warmup-$key-bare" "$threads" "$conns" "$WARMUP" "$BARE_URL" >/dev/null
  for round in $(seq "$ROUNDS"); do
    for target in lampyr default bare; do
      case $target in
        lampyr) url="$LAMPYR_URL_FN" ;;
        default) url="$DEFAULT_URL_FN" ;;
        *) url="$BARE_URL" ;;
      esac
      r="$(run_wrk "$key-$target-r$round" "$threads" "$conns" "$DURATION" "$url")"
      log "wrk -t$threads -c$conns round $round $target: $(awk '{ printf "%s req/s, p50 %s ms, p99 %s ms (%d requests in %s s)", $1, $2, $3, $4, $5 }' <<<"$r")"
      echo "$key $target $round $r" >>"$RESULTS"
    done
  done
done

# The lampyr instance must still be the single, warm one.
start="$(check_hello "$LAMPYR_URL_FN")"
[[ "$start" == warm ]] || log "warning: lampyr answered x-lampyr-start=$start after the runs"

# ------------------------------------------------------------------ report
# median SHAPE TARGET: the run with the median requests/s (for an even
# ROUNDS the lower of the two middle runs), plus the min and max requests/s.
median() {
  awk -v c="$1" -v t="$2" '$1 == c && $2 == t' "$RESULTS" | sort -k4,4g |
    awk '{ row[NR] = $0; rps[NR] = $4 } END { m = int((NR + 1) / 2); print row[m], rps[1], rps[NR] }'
}

fmt_int() { awk '{ printf "%.0f", $1 }' <<<"$1"; }

COMMIT="$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)"
if [[ -n "$(git -C "$ROOT" status --porcelain -- crates runtimes Cargo.toml Cargo.lock 2>/dev/null || true)" ]]; then
  COMMIT="$COMMIT (with uncommitted changes)"
fi
CPU_MODEL="$(awk -F': *' '/^model name/ { print $2; exit }' /proc/cpuinfo 2>/dev/null || true)"
NPROC="$(nproc)"
KERNEL="$(uname -r)"
NODE_VERSION="$(node --version)"
WRK_VERSION="$({ wrk -v 2>&1 || true; } | awk 'NR == 1 { print $2 }')" # wrk -v exits 1
DATE="$(date -u '+%Y-%m-%d %H:%M UTC')"

SECTION="$WORK/section.md"
{
  echo "$MARK_START"
  echo '## Warm invocations (`bench/warm`)'
  echo
  echo 'The same Node.js handler (an async function returning status 200, `text/plain`, `Hello World`) is measured through lampyr'"'"'s HTTP trigger, as `/fn/hello` (one warm instance, `max_instances = 1`, `concurrency = 64`) and as `/fn/hello-default` (the manifest every new function gets: `concurrency = 1`, `max_instances = 10`, one request at a time per instance), and through a bare Node.js `http` server that `require`s the same file and calls it directly (`bench/warm/bare-node.js`), so the difference is lampyr'"'"'s platform path.'
  echo "Load is \`wrk --latency\` for $DURATION per run, after a $WARMUP warm-up per target and load shape; $ROUNDS runs per target alternate the three targets and each row is the run with the median requests/s (range across runs in brackets)."
  echo "wrk runs on the same CPUs as the server it measures, so its threads take CPU from that server: one thread drives 16 connections, and the \`-t2 -c16\` rows show what a second wrk thread, competing for the ${NPROC} CPUs, does to each server."
  echo
  echo "Machine: ${NPROC} CPUs${CPU_MODEL:+ ($CPU_MODEL)}, Linux $KERNEL, Node.js $NODE_VERSION, wrk $WRK_VERSION; lampyr $COMMIT; run $DATE. wrk, lampyr and Node.js share the machine."
  echo
  echo '| connections | wrk | server | requests/s | p50 ms | p99 ms | lampyr / bare req/s |'
  echo '| ---: | --- | --- | ---: | ---: | ---: | ---: |'
  for shape in "${SHAPES[@]}"; do
    threads="${shape%%:*}" conns="${shape##*:}"
    key="t${threads}c${conns}"
    read -r _ _ _ l_rps l_p50 l_p99 _ _ l_min l_max <<<"$(median "$key" lampyr)"
    read -r _ _ _ d_rps d_p50 d_p99 _ _ d_min d_max <<<"$(median "$key" default)"
    read -r _ _ _ b_rps b_p50 b_p99 _ _ b_min b_max <<<"$(median "$key" bare)"
    ratio="$(awk -v a="$l_rps" -v b="$b_rps" 'BEGIN { printf "%.2f×", a / b }')"
    d_ratio="$(awk -v a="$d_rps" -v b="$b_rps" 'BEGIN { printf "%.2f×", a / b }')"
    if [[ $ROUNDS -gt 1 ]]; then
      l_range=" ($(fmt_int "$l_min")–$(fmt_int "$l_max"))"
      d_range=" ($(fmt_int "$d_min")–$(fmt_int "$d_max"))"
      b_range=" ($(fmt_int "$b_min")–$(fmt_int "$b_max"))"
    else
      l_range="" d_range="" b_range=""
    fi
    echo "| $conns | \`-t$threads -c$conns\` | lampyr \`/fn/hello\` (concurrency 64) | $(fmt_int "$l_rps")$l_range | $l_p50 | $l_p99 | **$ratio** |"
    echo "| $conns | \`-t$threads -c$conns\` | lampyr \`/fn/hello-default\` (default manifest) | $(fmt_int "$d_rps")$d_range | $d_p50 | $d_p99 | **$d_ratio** |"
    echo "| $conns | \`-t$threads -c$conns\` | bare Node.js | $(fmt_int "$b_rps")$b_range | $b_p50 | $b_p99 | |"
  done
  echo
  echo 'Reproduce: `bench/warm/run.sh` (`DURATION=5s bench/warm/run.sh` for a shorter run; see `bench/README.md`).'
  echo "$MARK_END"
} >"$SECTION"

mkdir -p "$(dirname "$OUT")"
TMP_OUT="$OUT.tmp.$$"
if [[ -f "$OUT" ]] && grep -qF "$MARK_START" "$OUT" && grep -qF "$MARK_END" "$OUT"; then
  # Replace the section between the markers (inclusive), keep everything else.
  awk -v start="$MARK_START" -v end="$MARK_END" -v section="$SECTION" '
    $0 == start { while ((getline l < section) > 0) print l; skip = 1; next }
    skip && $0 == end { skip = 0; next }
    !skip { print }' "$OUT" >"$TMP_OUT"
elif [[ -f "$OUT" ]]; then
  { cat "$OUT"; echo; cat "$SECTION"; } >"$TMP_OUT"
else
  {
    echo '# lampyr benchmarks'
    echo
    echo 'Every number on this page comes from the scripts in `bench/` and is regenerated by running them; see `bench/README.md`.'
    echo
    cat "$SECTION"
  } >"$TMP_OUT"
fi
mv "$TMP_OUT" "$OUT"

log "wrote the warm section of $OUT:"
cat "$SECTION" >&2
