-- wrk script for bench/run's submit scenario: POST /reports with a valid JSON body
-- (a random user out of 1,000, the last 30 days), and one machine-readable line at the end.
wrk.method = "POST"
wrk.path = "/reports"
wrk.headers["Content-Type"] = "application/json"

local today = os.date("!%Y-%m-%d")
local from = os.date("!%Y-%m-%d", os.time() - 30 * 86400)

request = function()
  local body = string.format('{"userId":%d,"startDate":"%s","endDate":"%s"}',
    math.random(1, 1000), from, today)
  return wrk.format(nil, nil, nil, body)
end

done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'BENCHJSON {"duration_s":%.3f,"requests":%d,"non_2xx":%d,"connect_errors":%d,' ..
    '"read_errors":%d,"write_errors":%d,"timeouts":%d,' ..
    '"latency_ms":{"p50":%.3f,"p90":%.3f,"p99":%.3f,"max":%.3f,"mean":%.3f}}\n',
    summary.duration / 1e6, summary.requests, e.status, e.connect, e.read, e.write, e.timeout,
    latency:percentile(50) / 1000, latency:percentile(90) / 1000,
    latency:percentile(99) / 1000, latency.max / 1000, latency.mean / 1000))
end
