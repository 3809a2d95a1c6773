-- wrk script: POST a realistic ~1 KB chat completion body (non-stream).
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer sk-bench-client"
local filler = string.rep("The quick brown fox jumps over the lazy dog. ", 18)
wrk.body = '{"model":"gpt-4.1","messages":[{"role":"system","content":"You are a helpful assistant."},' ..
           '{"role":"user","content":"' .. filler .. '"}],"temperature":0.2,"max_tokens":256,"user":"bench"}'
