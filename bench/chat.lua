-- wrk script: POST a realistic ~1 KB chat completion body (non-stream).
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer sk-bench-client"
local filler = string.rep("The quick brown fox jumps over the lazy dog. ", 18)
wrk.body = '{"model":"gpt-4.1","messages":[{"role":"system","content":"You are a helpful assistant."},' ..
           '{"role":"user","content":"' .. filler .. '"}],"temperature":0.2,"max_tokens":256,"user":"bench"}'

-- Percentiles in microseconds (wrk's --latency table stops at 99 %) and the error counts, one per
-- line, for relay_bench.sh.
function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format("P50 %d\nP99 %d\nP999 %d\n", latency:percentile(50), latency:percentile(99),
                         latency:percentile(99.9)))
  io.write(string.format("REQUESTS %d\nERRORS %d %d %d %d %d\n", summary.requests, e.connect, e.read,
                         e.write, e.status, e.timeout))
end
