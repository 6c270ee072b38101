# shellcheck shell=bash disable=SC2154  # pg, opt, keep, ...: bench/run's
# bench/soak.sh: the soak scenario of bench/run (issue 15), sourced by bench/run after its
# helpers. A steady offered load through the API on a PostgreSQL cluster of its own
# (default settings: autovacuum on; the shared dev server runs with it off), with long
# analytical reads and the retention pruner on; p50/p95 submit → start per window,
# report_queue's dead tuples and size over time, and nothing lost at the end.

PG_BIN=/usr/lib/postgresql/15/bin
SOAK_DIR=""
SOAK_RUN=""
READERS_PID=""

# soak_cluster_start: initdb into a temp dir and start it on a free loopback port; sets
# $pg to it. initdb and postgres refuse to run as root, so as root they run as `postgres`.
soak_cluster_start() {
  [ -x "$PG_BIN/initdb" ] || die "the soak needs PostgreSQL 15's initdb at $PG_BIN"
  local port
  SOAK_DIR="$(mktemp -d /tmp/reportd-soak-pg.XXXXXX)"
  port="$("$BENCH" free-port)"
  if [ "$(id -u)" = 0 ]; then
    id postgres >/dev/null 2>&1 || die "running as root, and there is no postgres user for initdb"
    chown postgres: "$SOAK_DIR"
    SOAK_RUN="runuser -u postgres --"
  fi
  CLEANUP_HOOKS="$CLEANUP_HOOKS soak_cluster_stop"
  $SOAK_RUN "$PG_BIN/initdb" -D "$SOAK_DIR/data" -U postgres --auth=trust -E UTF8 \
    >"$SC_DIR/initdb.log" 2>&1 || { cat "$SC_DIR/initdb.log" >&2; die "initdb failed"; }
  $SOAK_RUN "$PG_BIN/pg_ctl" -D "$SOAK_DIR/data" -l "$SOAK_DIR/postgres.log" -w -t 60 \
    -o "-p $port -k $SOAK_DIR -c listen_addresses=127.0.0.1" start \
    >"$SC_DIR/pg_ctl.log" 2>&1 || { cat "$SC_DIR/pg_ctl.log" "$SOAK_DIR/postgres.log" >&2; die "pg_ctl start failed"; }
  pg="postgres://postgres@127.0.0.1:$port"
  log "soak: own PostgreSQL cluster on port $port ($SOAK_DIR; autovacuum $(psql -qtAX "$pg/postgres" -c 'show autovacuum'))"
}

# soak_cluster_stop: stops the cluster (fast: open reads are cut) and removes it unless --keep.
soak_cluster_stop() {
  [ -n "$SOAK_DIR" ] || return 0
  if [ -n "$READERS_PID" ]; then
    pkill -P "$READERS_PID" 2>/dev/null || true
    kill "$READERS_PID" 2>/dev/null || true
    wait "$READERS_PID" 2>/dev/null || true
    READERS_PID=""
  fi
  $SOAK_RUN "$PG_BIN/pg_ctl" -D "$SOAK_DIR/data" -m fast -w -t 60 stop >/dev/null 2>&1 || true
  cp "$SOAK_DIR/postgres.log" "$SC_DIR/postgres.log" 2>/dev/null || true
  [ "$keep" = 1 ] || rm -rf "$SOAK_DIR"
  SOAK_DIR=""
}

# soak_seed_old N SECONDS: N completed rows whose finished_at crosses the 30-day retention
# limit evenly over the next SECONDS, so the pruner deletes at a steady pace.
soak_seed_old() {
  psql_db "INSERT INTO report_queue (id, payload, status, user_id, attempts, created_at, updated_at,
                                     started_at, finished_at, enqueued_at)
           SELECT gen_random_uuid(),
                  jsonb_build_object('userId', g % 1000 + 1, 'startDate', '2026-01-01', 'endDate', '2026-01-31'),
                  'completed', g % 1000 + 1, 1, t - interval '1 s', t, t - interval '0.2 s', t, t - interval '1 s'
           FROM (SELECT g, now() - interval '30 days' + make_interval(secs => g::float8 * $2 / $1) AS t
                 FROM generate_series(0, $1 - 1) AS g) AS s" >/dev/null
  psql_db "VACUUM (ANALYZE) report_queue" >/dev/null
}

# soak_sampler FILE: every --soak-sample-s, one JSON line of report_queue's table stats.
soak_sampler() {
  while :; do
    psql_db "SELECT json_build_object('t', extract(epoch FROM now()), 'n_live_tup', n_live_tup,
               'n_dead_tup', n_dead_tup, 'total_bytes', pg_total_relation_size('report_queue'),
               'last_autovacuum', extract(epoch FROM last_autovacuum), 'autovacuum_count', autovacuum_count,
               'n_tup_del', n_tup_del, 'oldest_xact_s',
               (SELECT extract(epoch FROM now() - min(xact_start)) FROM pg_stat_activity
                WHERE backend_xid IS NOT NULL OR backend_xmin IS NOT NULL))
             FROM pg_stat_user_tables WHERE relname = 'report_queue'" >>"$1" 2>/dev/null || true
    sleep "${opt[soak-sample-s]}"
  done
}

# soak_readers END LOG: every --soak-read-every-s (first after half of it), three
# connections each hold a REPEATABLE READ snapshot on user_activity for --soak-read-s;
# no burst starts that would outlast END (unix seconds).
soak_readers() {
  local end="$1" every="${opt[soak-read-every-s]}" secs="${opt[soak-read-s]}" next now
  next=$(( $(date +%s) + every / 2 ))
  while :; do
    now="$(date +%s)"
    [ $((next + secs)) -le "$end" ] || break
    [ "$now" -ge "$next" ] || { sleep 1; continue; }
    echo "$now" >>"$2"
    for _ in 1 2 3; do
      psql -qtAX -v ON_ERROR_STOP=1 "$REPORTD_DATABASE__URL" >/dev/null 2>&1 <<SQL &
BEGIN ISOLATION LEVEL REPEATABLE READ;
SELECT count(*), sum(length(user_activity::text)) FROM user_activity;
SELECT pg_sleep($secs);
COMMIT;
SQL
    done
    wait
    next=$((next + every))
  done
}

# soak_windows T0 SECONDS: p50/p95 created → started per --soak-window-s window of the jobs
# created during the load, as a JSON array.
soak_windows() {
  psql_db "SELECT coalesce(json_agg(w ORDER BY w.window_index), '[]') FROM (
             SELECT floor(extract(epoch FROM created_at - to_timestamp($1)) / ${opt[soak-window-s]})::int AS window_index,
                    count(*) AS jobs,
                    count(*) FILTER (WHERE status = 'completed') AS completed,
                    round((percentile_cont(0.5) WITHIN GROUP (ORDER BY extract(epoch FROM started_at - created_at) * 1000))::numeric, 1) AS p50_ms,
                    round((percentile_cont(0.95) WITHIN GROUP (ORDER BY extract(epoch FROM started_at - created_at) * 1000))::numeric, 1) AS p95_ms
             FROM report_queue
             WHERE created_at >= to_timestamp($1) AND created_at < to_timestamp($1) + make_interval(secs => $2)
             GROUP BY 1) AS w"
}

# soak_queue_depth: SQS messages left (visible + in flight) as reportd's /metrics reports
# them (refreshed every 5 s): polls up to 30 s for 0, prints the last reading.
soak_queue_depth() {
  local depth="" deadline=$((SECONDS + 30))
  while :; do
    depth="$(curl -fsS --max-time 5 "http://127.0.0.1:$SC_PORT/metrics" 2>/dev/null \
      | awk '/^reportd_queue_depth\{/ && /queue="main"/ {s += $NF; seen = 1} END {if (seen) print s}' || true)"
    [ "${depth:-x}" != 0 ] || break
    [ "$SECONDS" -lt "$deadline" ] || break
    sleep 1
  done
  echo "${depth:-null}"
}

# soak_load: the offered load; then waits for every accepted job.
soak_load() {
  local secs="$1" rate="${opt[soak-rate]}" t0="$2" jobs
  jobs="$(awk -v r="$rate" -v s="$secs" 'BEGIN {printf "%d", r * s}')"
  log "soak: $jobs jobs at $rate/s for $secs s (${opt[soak-job-ms]} ms each, ${opt[soak-workers]} workers)"
  "$BENCH" submit --url "http://127.0.0.1:$SC_PORT" --jobs "$jobs" --rate "$rate" --concurrency 32 \
    --users 1000 --timeout-s $((secs + 300)) >"$SC_DIR/submit.json" \
    || log "soak: not every submit was accepted (see $SC_DIR/submit.json)"
  "$BENCH" wait --jobs "$(jq .accepted "$SC_DIR/submit.json")" --since "$t0" --stall-s 120 \
    --timeout-s 600 >"$SC_DIR/wait.json" || log "soak: not every accepted job completed (see $SC_DIR/wait.json)"
}

scenario_soak() {
  SC_DIR="$work/soak"; mkdir -p "$SC_DIR"
  soak_cluster_start
  new_scenario soak
  local secs old="${opt[soak-old-rows]}" t0 end
  secs="$(awk -v m="${opt[soak-min]}" 'BEGIN {printf "%d", m * 60}')"
  [ "$secs" -ge 60 ] || die "--soak-min must be at least 1"
  [ "$old" != auto ] || old="$(awk -v r="${opt[soak-rate]}" -v s="$secs" 'BEGIN {printf "%d", r * s}')"
  export REPORTD_SERVER__ROLES='["api", "worker"]' REPORTD_WORKERS__COUNT="${opt[soak-workers]}" \
         REPORTD_SIMULATE__DURATION_MS="[${opt[soak-job-ms]}, ${opt[soak-job-ms]}]" \
         REPORTD_RETENTION__COMPLETED_DAYS=30 REPORTD_RETENTION__INTERVAL_S=60
  log "soak: seed-demo --users ${opt[soak-users]} --days ${opt[soak-days]}; $old completed rows expiring over $secs s"
  "$REPORTD" seed-demo --users "${opt[soak-users]}" --days "${opt[soak-days]}" >"$SC_DIR/seed-demo.log" 2>&1 \
    || { cat "$SC_DIR/seed-demo.log" >&2; die "seed-demo failed"; }
  REPORTD_DATABASE__URL="$pg/$SC_DB" soak_seed_old "$old" "$secs"
  start_reportd
  t0="$("$BENCH" now)"; end=$(( ${t0%.*} + secs ))
  soak_sampler "$SC_DIR/samples.jsonl" &
  SAMPLER_PID=$!
  soak_readers "$end" "$SC_DIR/reads.txt" &
  READERS_PID=$!
  soak_load "$secs" "$t0"
  wait "$READERS_PID" 2>/dev/null || true
  READERS_PID=""
  kill "$SAMPLER_PID" 2>/dev/null || true; wait "$SAMPLER_PID" 2>/dev/null || true; SAMPLER_PID=""
  soak_finish "$t0" "$secs" "$old"
}

# soak_finish T0 SECONDS OLD: the end-state checks, the result and the plot.
soak_finish() {
  local t0="$1" secs="$2" depth by_status left_old png
  depth="$(soak_queue_depth)"
  psql_db "SELECT json_build_object('t', extract(epoch FROM now()), 'n_live_tup', n_live_tup, 'n_dead_tup', n_dead_tup,
             'total_bytes', pg_total_relation_size('report_queue'), 'last_autovacuum', extract(epoch FROM last_autovacuum),
             'autovacuum_count', autovacuum_count, 'n_tup_del', n_tup_del)
           FROM pg_stat_user_tables WHERE relname = 'report_queue'" >>"$SC_DIR/samples.jsonl"
  by_status="$(psql_db "SELECT coalesce(json_object_agg(status, n), '{}') FROM (SELECT status, count(*) AS n
                        FROM report_queue WHERE created_at >= to_timestamp($t0) GROUP BY status) AS s")"
  left_old="$(psql_db "SELECT count(*) FROM report_queue WHERE created_at < to_timestamp($t0) - interval '29 days'")"
  soak_windows "$t0" "$secs" >"$SC_DIR/windows.json"
  stop_reportd
  png="$(dirname "$out")/$date_tag-soak.png"
  jq -s . "$SC_DIR/samples.jsonl" >"$SC_DIR/samples.json"
  jq -Rs 'split("\n") | map(select(. != "") | tonumber)' "$SC_DIR/reads.txt" 2>/dev/null >"$SC_DIR/reads.json" || echo '[]' >"$SC_DIR/reads.json"
  jq -n --slurpfile s "$SC_DIR/submit.json" --slurpfile w "$SC_DIR/windows.json" --slurpfile smp "$SC_DIR/samples.json" \
     --slurpfile reads "$SC_DIR/reads.json" --argjson by "$by_status" --argjson depth "$depth" \
     --argjson left_old "$left_old" --argjson old "$3" --argjson t0 "$t0" --argjson secs "$secs" \
     --argjson rate "${opt[soak-rate]}" --argjson ms "${opt[soak-job-ms]}" --argjson workers "${opt[soak-workers]}" \
     --argjson window "${opt[soak-window-s]}" --argjson read_s "${opt[soak-read-s]}" --arg png "$(basename "$png")" \
     --argjson sample "${opt[soak-sample-s]}" '
    ($s[0]) as $s | ($w[0]) as $w | ($by.completed // 0) as $done |
    {t0: $t0, seconds: $secs, plot: $png, sample_s: $sample, rate: $rate, job_ms: $ms, workers: $workers, window_s: $window,
     submitted: $s.jobs, accepted: $s.accepted, submit_errors: $s.errors, submit_latency_ms: $s.latency_ms,
     by_status: $by, completed: $done, sqs_depth_at_end: $depth,
     old_rows_seeded: $old, old_rows_left: $left_old,
     reads: {starts: $reads[0], seconds: $read_s, connections: 3},
     windows: $w, samples: $smp[0],
     lost_or_stranded: ($s.accepted - $done),
     no_loss: ($done == $s.accepted and ($by | to_entries | map(select(.key != "completed") | .value) | add // 0) == 0 and $depth == 0),
     p95_first_ms: ($w[0].p95_ms // null), p95_last_ms: ($w[-1].p95_ms // null),
     p95_ok: (if ($w | length) > 0 and $w[0].p95_ms > 0 then $w[-1].p95_ms <= 1.2 * $w[0].p95_ms else null end)}' \
    | tee "$SC_DIR/soak.json" | result
  if bench_plot "$SC_DIR/soak.json" "$png"; then log "soak: plot $png"; else log "soak: WARNING: no plot (see $SC_DIR/plot.log)"; fi
}

# bench_plot JSON PNG: bench/soak-plot.py in a venv of its own with matplotlib from PyPI.
bench_plot() {
  local venv="$root/target/bench-venv"
  if [ ! -x "$venv/bin/python" ] || ! "$venv/bin/python" -c 'import matplotlib' 2>/dev/null; then
    { python3 -m venv "$venv" && "$venv/bin/pip" install -q matplotlib; } >"$SC_DIR/plot.log" 2>&1 || return 1
  fi
  "$venv/bin/python" "$root/bench/soak-plot.py" "$1" "$2" >>"$SC_DIR/plot.log" 2>&1
}

md_soak() {
  jq -r '.results.soak // empty |
    def n0: if . == null then "–" else (round | tostring) end;
    def min1: (. / 6 | round) / 10 | tostring;
    def mib: if . == null then "–" else ((. / 1048576 * 10 | round) / 10 | tostring) + " MiB" end;
    def ok(c): if c then "✅" else "❌" end;
    . as $s |
    "## Soak: \(.rate) jobs/s offered through the API for \(.seconds / 60 | n0) min, \(.job_ms) ms jobs on \(.workers) workers, own PostgreSQL cluster (autovacuum on), retention pruner on, 3 × \(.reads.seconds) s REPEATABLE READ reads of `user_activity` at \(.reads.starts | map(. - $s.t0 | round | tostring + " s") | join(", "))",
    "",
    "| window (from start) | jobs created | submit → start p50 | p95 |",
    "|---|---|---|---|",
    (.windows[] | "| \(.window_index * $s.window_s | min1)–\((.window_index + 1) * $s.window_s | min1) min | \(.jobs) | \(.p50_ms | n0) ms | \(.p95_ms | n0) ms |"),
    "",
    "- Last window p95 within 20 % of the first (\(.p95_first_ms | n0) → \(.p95_last_ms | n0) ms): \(if .p95_ok == null then "–" else ok(.p95_ok) end)",
    "- Nothing lost or stranded: \(.accepted) accepted of \(.submitted) submitted, by status \(.by_status | tostring), SQS depth at the end \(.sqs_depth_at_end // "?"): \(ok(.no_loss))",
    "- `report_queue` (sampled every \(.sample_s) s): dead tuples max \(.samples | map(.n_dead_tup) | max | n0), at the end \(.samples[-1].n_dead_tup | n0); size \(.samples[0].total_bytes | mib) → max \(.samples | map(.total_bytes) | max | mib) → end \(.samples[-1].total_bytes | mib); autovacuums \(.samples[-1].autovacuum_count // 0)",
    "- Plot (dead tuples, table size, p95 per window): `\(.plot)`",
    "- Retention: \(.old_rows_seeded) old completed rows seeded to expire over the run, \(.old_rows_left) left at the end",
    ""' "$1"
}
