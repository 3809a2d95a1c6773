-- wrk script: POST a ~1 KB chat completion body with stream: true.
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
-- On POST /v1/chat/completions the canned upstream answers with its realistic 203-event stream.
wrk.headers["X-Bench-Stream"] = "1"
local filler = string.rep("The quick brown fox jumps over the lazy dog. ", 18)
wrk.body = '{"model":"gpt-4.1","stream":true,"messages":[{"role":"user","content":"' .. filler .. '"}],"max_tokens":256}'

-- Percentiles in microseconds (wrk's --latency table stops at 99 %) and the error counts, one per
-- line, for relay_bench.sh.
function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format("P50 %d\nP99 %d\nP999 %d\n", latency:percentile(50), latency:percentile(99),
                         latency:percentile(99.9)))
  io.write(string.format("REQUESTS %d\nERRORS %d %d %d %d %d\n", summary.requests, e.connect, e.read,
                         e.write, e.status, e.timeout))
end
