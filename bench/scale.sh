# shellcheck shell=bash disable=SC2154  # pg, opt, keep, ...: bench/run's
# bench/scale.sh: the ratio, fleet and noisy scenarios of bench/run (issue 15), sourced by
# bench/run after its helpers (new_scenario, start_reportd, cpu_snap, result, opt, ...).
# Each scenario_X writes its figures with `result`; each md_X prints its markdown section
# from the results JSON ($1).

# ---- shared ------------------------------------------------------------------------------

# fresh_db_queue TAG DIR: a database and queues of their own for one round of a scenario
# (REPORTD_DATABASE__URL and the queue name exported, so cleanup_scenario drops the
# current round's on failure).
fresh_db_queue() {
  export REPORTD_DATABASE__URL="$pg/${SC_DB}_$1" REPORTD_SQS__QUEUE_NAME="$SC_QUEUE-$1"
  "$REPORTD" migrate >>"$2/setup.log" 2>&1 || { cat "$2/setup.log" >&2; die "reportd migrate failed ($1)"; }
}

drop_db_queue() {
  [ "$keep" = 0 ] || return 0
  "$BENCH" drop-queues >/dev/null 2>&1 || true
  "$BENCH" drop-database >/dev/null 2>&1 || true
}

# psql_db SQL: one statement against the current round's database, unaligned output.
psql_db() {
  psql -qtAX -v ON_ERROR_STOP=1 "$REPORTD_DATABASE__URL" -c "$1"
}

# us_per_job SNAP0 SNAP1 JOBS: {"reportd": µs, "postgres": µs, "localstack": µs} of CPU per
# job between two cpu_snap lines.
us_per_job() {
  awk -v tck="$CLK_TCK" -v a="$1" -v b="$2" -v n="$3" 'BEGIN {
    split(a, x, " "); split(b, y, " "); if (n <= 0) n = 1
    printf "{\"reportd\":%.1f,\"postgres\":%.1f,\"localstack\":%.1f}",
      (y[2]-x[2])/tck/n*1e6, (y[3]-x[3])/tck/n*1e6, (y[4]-x[4])/tck/n*1e6 }'
}

# pg_writes: "inserted updated deleted hot_updated" rows of report_queue so far, once the
# counters stop moving. A PostgreSQL 15 backend publishes its counters at most once a second
# while connected, and always when it exits: callers stop the processes that wrote first,
# and this waits for three equal readings over 1 s (15 s deadline).
pg_writes() {
  local q="SELECT n_tup_ins, n_tup_upd, n_tup_del, n_tup_hot_upd FROM pg_stat_user_tables WHERE relname = 'report_queue'"
  local prev="" cur same=0 deadline=$((SECONDS + 15))
  while :; do
    cur="$(psql_db "$q" | tr '|' ' ')"
    if [ "$cur" = "$prev" ]; then same=$((same + 1)); else same=0; fi
    [ "$same" -lt 2 ] || break
    if [ "$SECONDS" -ge "$deadline" ]; then
      log "pg_stat_user_tables still moving after 15 s; using the last reading"
      break
    fi
    prev="$cur"
    sleep 0.5
  done
  echo "$cur"
}

# writes_json W0 W1 JOBS: row writes per job between two pg_writes readings.
writes_json() {
  awk -v a="$1" -v b="$2" -v n="$3" 'BEGIN {
    split(a, x, " "); split(b, y, " "); if (n <= 0) n = 1
    ins = y[1]-x[1]; upd = y[2]-x[2]; del = y[3]-x[3]; hot = y[4]-x[4]
    printf "{\"inserts\":%d,\"updates\":%d,\"deletes\":%d,\"hot_updates\":%d,\"writes_per_job\":%.2f,\"hot_ratio\":%s}",
      ins, upd, del, hot, (ins+upd+del)/n, (upd > 0 ? sprintf("%.3f", hot/upd) : "null") }'
}

# ---- ratio: interleaved ceilings and drains ------------------------------------------------

# ratio_ceiling FILE: one SQS reference, the best receive+delete rate over
# --ceiling-concurrency, into FILE.
ratio_ceiling() {
  local out="$1" c files=()
  for c in ${opt[ceiling-concurrency]}; do
    REPORTD_SQS__QUEUE_NAME="$SC_QUEUE-c$c" "$BENCH" ceiling --messages "${opt[n-ceiling]}" \
      --concurrency "$c" --timeout-s 600 >"$out.c$c"
    REPORTD_SQS__QUEUE_NAME="$SC_QUEUE-c$c" "$BENCH" drop-queues >/dev/null 2>&1 || true
    files+=("$out.c$c")
  done
  jq -s '{recv: (map(.receive_delete_msg_per_s) | max), send: (map(.send_msg_per_s) | max)}' "${files[@]}" >"$out"
}

# ratio_drain I: the drain scenario on a fresh database and queue; jobs/s and CPU per job.
ratio_drain() {
  local i="$1" n="${opt[n-drain]}" d="$SC_DIR/drain$1" snap0 snap1
  mkdir -p "$d"
  fresh_db_queue "r$i" "$d"
  "$BENCH" seed --jobs "$n" --concurrency 8 >"$d/seed.json"
  export REPORTD_SERVER__ROLES='["worker"]' REPORTD_WORKERS__COUNT="${opt[workers]}"
  snap0="$(cpu_snap)"
  start_reportd
  "$BENCH" wait --jobs "$n" --timeout-s $((60 + n / 50)) >"$d/wait.json"
  snap1="$(cpu_snap)"
  stop_reportd
  drop_db_queue
  jq --argjson us "$(us_per_job "$snap0" "$snap1" "$n")" --argjson cpu "$(cpu_json "$snap0" "$snap1")" \
    '{jobs: .jobs, completed: .completed, jobs_per_s: .jobs_per_s, span_s: .span_s,
      reportd_us_per_job: $us.reportd, postgres_us_per_job: $us.postgres,
      localstack_us_per_job: $us.localstack, cpu: $cpu}' "$d/wait.json" >"$d/round.json"
  log "ratio: drain $i: $(jq -r '"\(.jobs_per_s) jobs/s, reportd \(.reportd_us_per_job) µs/job, PostgreSQL \(.postgres_us_per_job) µs/job"' "$d/round.json")"
}

scenario_ratio() {
  new_scenario ratio nodb
  local rounds="${opt[rounds]}" i cfiles=() dfiles=()
  [ "$rounds" -ge 1 ] || die "--rounds must be at least 1"
  log "ratio: ceiling, then $rounds × (drain of ${opt[n-drain]} jobs, ceiling)"
  ratio_ceiling "$SC_DIR/ceiling0.json"
  cfiles+=("$SC_DIR/ceiling0.json")
  for i in $(seq 1 "$rounds"); do
    log "ratio: round $i of $rounds"
    ratio_drain "$i"
    dfiles+=("$SC_DIR/drain$i/round.json")
    ratio_ceiling "$SC_DIR/ceiling$i.json"
    cfiles+=("$SC_DIR/ceiling$i.json")
    log "ratio: ceiling $i: $(jq .recv "$SC_DIR/ceiling$i.json") msg/s (receive+delete)"
  done
  jq -s . "${cfiles[@]}" >"$SC_DIR/ceilings.json"
  jq -s . "${dfiles[@]}" >"$SC_DIR/drains.json"
  jq -n --slurpfile c "$SC_DIR/ceilings.json" --slurpfile d "$SC_DIR/drains.json" \
     --argjson w "${opt[workers]}" --argjson n "${opt[n-drain]}" '
    def median: sort | if length % 2 == 1 then .[(length - 1) / 2] else (.[length / 2 - 1] + .[length / 2]) / 2 end;
    ($c[0] | map(.recv)) as $cr | $d[0] as $dr |
    [range(0; $dr | length) as $i | $dr[$i] + {round: ($i + 1), ceiling_before: $cr[$i], ceiling_after: $cr[$i + 1],
       ratio: ($dr[$i].jobs_per_s / (($cr[$i] + $cr[$i + 1]) / 2))}] as $rounds |
    {workers: $w, jobs: $n, ceilings: $cr, rounds: $rounds,
     ratio_median: ($rounds | map(.ratio) | median), ratio_min: ($rounds | map(.ratio) | min),
     ratio_max: ($rounds | map(.ratio) | max),
     reportd_us_median: ($rounds | map(.reportd_us_per_job) | median),
     postgres_us_median: ($rounds | map(.postgres_us_per_job) | median),
     targets: {ratio: 0.9, reportd_us: 60, postgres_us: 100}}' | result
}

md_ratio() {
  jq -r '.results.ratio // empty |
    def pct: ((. * 1000 | round) / 10 | tostring) + " %";
    def n0: round | tostring;
    def ok(c): if c then "✅" else "❌" end;
    "## Honest ratio: \(.rounds | length) drains of \(.jobs) zero-work jobs (\(.workers) workers), each between two ceilings",
    "",
    "| round | ceiling before (msg/s) | drain (jobs/s) | ceiling after (msg/s) | ratio to their mean | reportd µs/job | PostgreSQL µs/job | LocalStack µs/job |",
    "|---|---|---|---|---|---|---|---|",
    (.rounds[] | "| \(.round) | \(.ceiling_before | n0) | \(.jobs_per_s | n0) | \(.ceiling_after | n0) | \(.ratio | pct) | \(.reportd_us_per_job | n0) | \(.postgres_us_per_job | n0) | \(.localstack_us_per_job | n0) |"),
    "",
    "Median ratio **\(.ratio_median | pct)** (range \(.ratio_min | pct)–\(.ratio_max | pct)), target ≥ 90 % \(ok(.ratio_median >= 0.9)); CPU per job (medians): reportd **\(.reportd_us_median | n0) µs** (target ≤ 60 \(ok(.reportd_us_median <= 60))), PostgreSQL **\(.postgres_us_median | n0) µs** (target ≤ 100 \(ok(.postgres_us_median <= 100))). PostgreSQL CPU counts the processes of the server at `--pg` (its postmaster and children, so other clients of it too); reportd CPU includes its start.",
    ""' "$1"
}

# ---- fleet: worker-only and api-only processes against one database and queue ---------------

FLEET_PIDS=""
FLEET_API_PORTS=""

# fleet_start ROLE COUNT: COUNT reportd processes with one role each, on ports of their own,
# each answering /health/live within 60 s.
fleet_start() {
  local role="$1" count="$2" k port pid deadline
  env | grep -E '^REPORTD_' | sort >"$SC_DIR/env.txt"
  for k in $(seq 1 "$count"); do
    port="$("$BENCH" free-port)"
    REPORTD_SERVER__ROLES="[\"$role\"]" REPORTD_SERVER__BIND="127.0.0.1:$port" \
      REPORTD_SERVER__PUBLIC_URL="http://127.0.0.1:$port" \
      "$REPORTD" serve >"$SC_DIR/$role-$k.log" 2>&1 &
    pid=$!
    FLEET_PIDS="$FLEET_PIDS $pid"
    [ "$role" != api ] || FLEET_API_PORTS="$FLEET_API_PORTS $port"
    deadline=$((SECONDS + 60))
    until curl -fsS -o /dev/null --max-time 2 "http://127.0.0.1:$port/health/live" 2>/dev/null; do
      kill -0 "$pid" 2>/dev/null || { tail -n 40 "$SC_DIR/$role-$k.log" >&2; die "$role process $k exited while starting"; }
      [ "$SECONDS" -lt "$deadline" ] || die "$role process $k did not answer /health/live within 60 s"
      sleep 0.1
    done
  done
}

# fleet_stop: SIGTERM to every fleet process, up to 60 s for all of them, then SIGKILL.
fleet_stop() {
  [ -n "$FLEET_PIDS" ] || return 0
  local p deadline=$((SECONDS + 60))
  # shellcheck disable=SC2086
  kill -TERM $FLEET_PIDS 2>/dev/null || true
  for p in $FLEET_PIDS; do
    while kill -0 "$p" 2>/dev/null && [ "$SECONDS" -lt "$deadline" ]; do sleep 0.1; done
    kill -0 "$p" 2>/dev/null && { log "fleet process $p ignored SIGTERM; killing it"; kill -KILL "$p" 2>/dev/null || true; }
    wait "$p" 2>/dev/null || true
  done
  FLEET_PIDS=""
  FLEET_API_PORTS=""
}

# fleet_snap: "unix-time reportd-fleet postgres" CPU ticks.
fleet_snap() {
  # shellcheck disable=SC2046,SC2086
  echo "$(date +%s.%N) $(ticks $FLEET_PIDS) $(ticks $(pg_pids))"
}

# fleet_phase_json SNAP0 SNAP1 W0 W1 JOBS WAIT_JSON: one phase's figures.
fleet_phase_json() {
  local cpu
  cpu="$(awk -v tck="$CLK_TCK" -v a="$1" -v b="$2" -v n="$5" 'BEGIN {
    split(a, x, " "); split(b, y, " "); if (n <= 0) n = 1
    printf "{\"reportd_cpu_s_per_1000\":%.3f,\"postgres_cpu_s_per_1000\":%.3f}", (y[2]-x[2])/tck/n*1000, (y[3]-x[3])/tck/n*1000 }')"
  jq --argjson cpu "$cpu" --argjson w "$(writes_json "$3" "$4" "$5")" \
    '{jobs: .jobs, completed: .completed, jobs_per_s: .jobs_per_s, span_s: .span_s,
      first_created_to_last_finished_s: .first_created_to_last_finished_s,
      e2e_jobs_per_s: (if (.first_created_to_last_finished_s // 0) > 0 then (.completed / .first_created_to_last_finished_s * 10 | round / 10) else null end),
      created_to_started_ms: .created_to_started_ms} + $cpu + {writes: $w}' "$6"
}

# fleet_submit M: M jobs submitted through the api processes (half each), run by the
# workers; waits for all of them.
fleet_submit() {
  local m="$1" d="$2" since i=0 port pids=() per
  local ports
  read -ra ports <<<"$FLEET_API_PORTS"
  per=$(( (m + ${#ports[@]} - 1) / ${#ports[@]} ))
  since="$("$BENCH" now)"
  for port in "${ports[@]}"; do
    i=$((i + 1))
    [ $((per * i)) -le "$m" ] || per=$((m - per * (i - 1)))
    "$BENCH" submit --url "http://127.0.0.1:$port" --jobs "$per" --concurrency 32 \
      --timeout-s $((60 + m / 20)) >"$d/submit-$i.json" &
    pids+=($!)
  done
  for i in "${pids[@]}"; do wait "$i" || die "fleet: a submit client failed (see $d/submit-*.json)"; done
  "$BENCH" wait --jobs "$m" --since "$since" --timeout-s $((60 + m / 20)) >"$d/submit-wait.json"
}

# fleet_round K: K worker processes (and 2 api processes) on a fresh database and queue:
# a drain of --n-fleet pre-queued jobs, then --n-fleet-submit jobs through the api. The
# fleet stops after each phase, so that every backend has published its row counters.
fleet_round() {
  local k="$1" w0 w1 w2 s0 s1
  # (shellcheck reads opt[n-fleet] as arithmetic on n)
  # shellcheck disable=SC2318
  local n="${opt[n-fleet]}" m="${opt[n-fleet-submit]}" d="$SC_DIR/w$1"
  mkdir -p "$d"
  fresh_db_queue "w$k" "$d"
  "$BENCH" seed --jobs "$n" --concurrency 8 >"$d/seed.json"
  export REPORTD_WORKERS__COUNT="${opt[fleet-workers]}"
  w0="$(pg_writes)"
  fleet_start api 2
  s0="$(fleet_snap)"
  log "fleet: $k worker processes × ${opt[fleet-workers]} workers drain $n jobs"
  fleet_start worker "$k"
  "$BENCH" wait --jobs "$n" --timeout-s $((60 + n / 20)) >"$d/wait.json"
  s1="$(fleet_snap)"
  fleet_stop
  w1="$(pg_writes)"
  fleet_phase_json "$s0" "$s1" "$w0" "$w1" "$n" "$d/wait.json" >"$d/drain.json"
  if [ "$m" -gt 0 ]; then
    log "fleet: $m jobs submitted through 2 api processes while $k worker processes run them"
    fleet_start api 2
    fleet_start worker "$k"
    s0="$(fleet_snap)"
    fleet_submit "$m" "$d"
    s1="$(fleet_snap)"
    fleet_stop
    w2="$(pg_writes)"
    fleet_phase_json "$s0" "$s1" "$w1" "$w2" "$m" "$d/submit-wait.json" >"$d/submit.json"
  else
    echo null >"$d/submit.json"
  fi
  drop_db_queue
  jq -n --argjson k "$k" --argjson each "${opt[fleet-workers]}" --slurpfile dr "$d/drain.json" \
     --slurpfile su "$d/submit.json" '{worker_processes: $k, workers_each: $each, api_processes: 2,
       drain: $dr[0], submit: $su[0]}' >"$d/round.json"
}

scenario_fleet() {
  new_scenario fleet nodb
  CLEANUP_HOOKS="$CLEANUP_HOOKS fleet_stop"
  # Every process has a pool of its own: sized so the fleet fits max_connections (100 on
  # a default server), as an operator of a fleet has to.
  export REPORTD_DATABASE__POOL_SIZE="${opt[fleet-pool]}"
  local k files=()
  for k in ${opt[fleet-sizes]}; do
    fleet_round "$k"
    files+=("$SC_DIR/w$k/round.json")
  done
  jq -s '{rounds: .}' "${files[@]}" | result
}

md_fleet() {
  jq -r '.results.fleet // empty |
    def n0: if . == null then "–" else (round | tostring) end;
    def n1: if . == null then "–" else ((. * 10 | round) / 10 | tostring) end;
    def n2: if . == null then "–" else ((. * 100 | round) / 100 | tostring) end;
    def pct: if . == null then "–" else ((. * 1000 | round) / 10 | tostring) + " %" end;
    def row(what; p): "| \(what) | \(p.jobs_per_s | n0) | \(p.e2e_jobs_per_s | n0) | \(p.writes.writes_per_job | n2) (\(p.writes.inserts) ins, \(p.writes.updates) upd, \(p.writes.deletes) del) | \(p.writes.hot_ratio | pct) | \(p.postgres_cpu_s_per_1000 | n2) s | \(p.reportd_cpu_s_per_1000 | n2) s | \(p.created_to_started_ms.p50 | n0) / \(p.created_to_started_ms.p99 | n0) ms |";
    "## Fleet: worker-only processes and 2 api-only processes, one database and one queue",
    "",
    "| fleet | jobs/s (first claim → last completion) | jobs/s (first submit → last completion) | PostgreSQL row writes per job | HOT share of updates | PostgreSQL CPU per 1,000 jobs | reportd CPU per 1,000 jobs (all processes) | created → started p50 / p99 |",
    "|---|---|---|---|---|---|---|---|",
    (.rounds[] |
      row("\(.worker_processes) × \(.workers_each) workers: drain of \(.drain.jobs) queued jobs"; .drain),
      (if .submit then row("\(.worker_processes) × \(.workers_each) workers: \(.submit.jobs) jobs submitted through 2 api processes"; .submit) else empty end)),
    "",
    "How to read it: PostgreSQL is the part a fleet shares. Its CPU per 1,000 jobs, times the jobs/s you need, is the share of one database core the fleet takes (e.g. 0.2 s per 1,000 jobs at 2,000 jobs/s is 40 % of a core); row writes per job (`pg_stat_user_tables` of `report_queue`: inserts + updates + deletes, the drain has no insert since its rows were seeded) times jobs/s is the write rate autovacuum has to keep up with, and the HOT share says how many of the updates avoided new index entries. If jobs/s grows with the worker processes while PostgreSQL CPU per job stays flat, the database is not the limit yet; when jobs/s stops growing, it is either the database (its CPU near a core) or the queue (LocalStack, one Python process, about one core here). On this 2-core machine every process shares the same cores, so the absolute jobs/s says less than the per-job costs.",
    ""' "$1"
}

# ---- noisy: one user submitting 10× each of the others ----------------------------------------

NOISY_USER=1000001
# Seconds of quiet before each run's load starts.
NOISY_SETTLE_S=15

# noisy_config DIR: the scenario's config with `[fairness] max_in_flight_per_user`, in DIR.
noisy_config() {
  local cfg="$1/config.toml" cap="${opt[noisy-cap]}"
  sed -E '/^[[:space:]]*max_in_flight_per_user[[:space:]]*=/d' "$SC_DIR/config.toml" >"$cfg"
  if grep -qE '^\[fairness\]' "$cfg"; then
    sed -i -E "s/^\[fairness\].*/&\nmax_in_flight_per_user = $cap/" "$cfg"
  else
    printf '\n[fairness]\nmax_in_flight_per_user = %s\n' "$cap" >>"$cfg"
  fi
  echo "$cfg"
}

# noisy_waits: queue wait (created → started) of the others and of the noisy user, and
# the noisy user's most jobs in progress at once, as JSON.
noisy_waits() {
  psql_db "WITH j AS (SELECT user_id = $NOISY_USER AS noisy, started_at, finished_at,
                             extract(epoch FROM started_at - created_at) * 1000 AS w
                      FROM report_queue WHERE status = 'completed'),
              ev AS (SELECT started_at AS t, 1 AS d FROM j WHERE noisy
                     UNION ALL SELECT finished_at, -1 FROM j WHERE noisy),
              run AS (SELECT sum(d) OVER (ORDER BY t, d ROWS UNBOUNDED PRECEDING) AS k FROM ev)
           SELECT json_build_object(
             'others_jobs', count(*) FILTER (WHERE NOT noisy),
             'others_p50_ms', round((percentile_cont(0.5) WITHIN GROUP (ORDER BY w) FILTER (WHERE NOT noisy))::numeric, 1),
             'others_p95_ms', round((percentile_cont(0.95) WITHIN GROUP (ORDER BY w) FILTER (WHERE NOT noisy))::numeric, 1),
             'noisy_jobs', count(*) FILTER (WHERE noisy),
             'noisy_p95_ms', round((percentile_cont(0.95) WITHIN GROUP (ORDER BY w) FILTER (WHERE noisy))::numeric, 1),
             'noisy_peak_in_progress', (SELECT coalesce(max(k), 0) FROM run))
           FROM j"
}

# noisy_run RUN: base (the others alone), off (with the noisy user) or on (and the cap).
noisy_run() {
  local run="$1" d="$SC_DIR/$1" users="${opt[noisy-users]}" rate="${opt[noisy-rate]}" secs="${opt[noisy-s]}"
  local others noisy=0 since pids=() p
  mkdir -p "$d"
  others="$(awk -v u="$users" -v r="$rate" -v s="$secs" 'BEGIN {printf "%d", u * r * s}')"
  [ "$run" = base ] || noisy="$(awk -v r="$rate" -v s="$secs" 'BEGIN {printf "%d", 10 * r * s}')"
  fresh_db_queue "$run" "$d"
  local base_config="$REPORTD_CONFIG"
  if [ "$run" = on ]; then
    REPORTD_CONFIG="$(noisy_config "$d")"
    export REPORTD_CONFIG
  fi
  start_reportd
  # A quiet start, some seconds after the previous run's database drop and queue
  # deletion, so their work does not land in this run's first seconds.
  sleep "$NOISY_SETTLE_S"
  log "noisy ($run): $users users × $rate/s$([ "$noisy" = 0 ] || echo " + user $NOISY_USER at $(awk -v r="$rate" 'BEGIN {print 10 * r}')/s") for $secs s"
  since="$("$BENCH" now)"
  "$BENCH" submit --url "http://127.0.0.1:$SC_PORT" --jobs "$others" --users "$users" --first-user 1 \
    --rate "$(awk -v u="$users" -v r="$rate" 'BEGIN {print u * r}')" --concurrency 16 \
    --timeout-s $((secs + 120)) >"$d/submit-others.json" &
  pids+=($!)
  if [ "$noisy" -gt 0 ]; then
    "$BENCH" submit --url "http://127.0.0.1:$SC_PORT" --jobs "$noisy" --users 1 --first-user "$NOISY_USER" \
      --rate "$(awk -v r="$rate" 'BEGIN {print 10 * r}')" --concurrency 16 \
      --timeout-s $((secs + 120)) >"$d/submit-noisy.json" &
    pids+=($!)
  fi
  for p in "${pids[@]}"; do wait "$p" || die "noisy ($run): a submit client failed (see $d)"; done
  "$BENCH" wait --jobs $((others + noisy)) --since "$since" --stall-s 120 \
    --timeout-s $((120 + (others + noisy) * ${opt[noisy-job-ms]} / 1000)) >"$d/wait.json"
  noisy_waits >"$d/waits.json"
  stop_reportd
  export REPORTD_CONFIG="$base_config"
  drop_db_queue
  jq --arg run "$run" --argjson o "$others" --argjson n "$noisy" '. + {run: $run, others_submitted: $o, noisy_submitted: $n}' \
    "$d/waits.json" >"$d/run.json"
}

scenario_noisy() {
  new_scenario noisy nodb
  export REPORTD_SERVER__ROLES='["api", "worker"]' REPORTD_WORKERS__COUNT="${opt[noisy-workers]}" \
         REPORTD_SIMULATE__DURATION_MS="[${opt[noisy-job-ms]}, ${opt[noisy-job-ms]}]"
  local r files=()
  for r in ${opt[noisy-runs]}; do
    noisy_run "$r"
    files+=("$SC_DIR/$r/run.json")
  done
  jq -s --argjson users "${opt[noisy-users]}" --argjson rate "${opt[noisy-rate]}" --argjson secs "${opt[noisy-s]}" \
     --argjson workers "${opt[noisy-workers]}" --argjson ms "${opt[noisy-job-ms]}" --argjson cap "${opt[noisy-cap]}" '
    (map({(.run): .}) | add) as $runs |
    {users: $users, rate_per_user: $rate, seconds: $secs, workers: $workers, job_ms: $ms, cap: $cap,
     capacity_jobs_per_s: ($workers * 1000 / $ms), runs: $runs,
     criterion: (if $runs.base and $runs.on then
       {on_vs_base: ($runs.on.others_p95_ms / $runs.base.others_p95_ms), ok: ($runs.on.others_p95_ms <= 2 * $runs.base.others_p95_ms)}
       else null end)}' "${files[@]}" | result
}

md_noisy() {
  jq -r '.results.noisy // empty |
    def n0: if . == null then "–" else (round | tostring) end;
    def ms: if . == null then "–" else (round | tostring) + " ms" end;
    . as $s |
    "## Noisy user: \(.users) users at \(.rate_per_user) jobs/s each, one more at 10× that, for \(.seconds) s (\(.workers) workers, \(.job_ms) ms jobs: capacity \(.capacity_jobs_per_s | n0) jobs/s)",
    "",
    "| run | others: jobs | others: queue wait p50 | others: p95 | noisy: jobs | noisy: p95 | noisy: most in progress at once |",
    "|---|---|---|---|---|---|---|",
    (["base", "off", "on"][] as $k | $s.runs[$k] // empty |
      "| \({base: "without the noisy user", off: "with the noisy user, cap off", on: "with the noisy user, cap \($s.cap) per user"}[$k]) | \(.others_jobs) | \(.others_p50_ms | ms) | **\(.others_p95_ms | ms)** | \(.noisy_jobs) | \(.noisy_p95_ms | ms) | \(.noisy_peak_in_progress) |"),
    "",
    (if .criterion then "Criterion: the others'"'"' p95 with the noisy user and the cap ≤ 2× without the noisy user: \((.criterion.on_vs_base * 100 | round) / 100)× \(if .criterion.ok then "✅" else "❌" end)."
     else "Criterion (others'"'"' p95 with the noisy user and the cap ≤ 2× without it): not evaluated, the base and cap-on runs did not both run." end),
    "Queue wait is created → started from `report_queue` (the API'"'"'s commit to the claim).",
    ""' "$1"
}
