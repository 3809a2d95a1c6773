-- wrk script: POST a ~1 KB chat completion body with stream: true.
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
local filler = string.rep("The quick brown fox jumps over the lazy dog. ", 18)
wrk.body = '{"model":"gpt-4.1","stream":true,"messages":[{"role":"user","content":"' .. filler .. '"}],"max_tokens":256}'
