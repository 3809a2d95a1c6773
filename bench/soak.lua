-- wrk script for bench/soak.sh: realistic chat calls (non-stream and stream) with faults mixed in
-- (upstream 500s, cut and reset streams, stalls past the first-byte timeout), paced by delay().
local filler = string.rep("The quick brown fox jumps over the lazy dog. ", 18)
local delay_ms = tonumber(os.getenv("SOAK_DELAY_MS") or "0")
local seq = 0

local function body(stream)
  return '{"model":"gpt-4.1","messages":[{"role":"user","content":"' .. filler .. '"}],"max_tokens":64' ..
         (stream and ',"stream":true' or '') .. '}'
end

-- One in 100 calls of each fault kind; the rest are plain (two thirds non-stream).
local faults = {
  {["x-fake-status"] = "500"},
  {["x-fake-status"] = "429"},
  {["x-fake-fault"] = "cut-stream"},
  {["x-fake-fault"] = "reset-mid-stream"},
  {["x-fake-fault"] = "reset-before-headers"},
  {["x-fake-fault"] = "garbage"},
  {["x-fake-fault"] = "stall-before-headers"},
}

function request()
  seq = seq + 1
  local r = math.random(100)
  local h = {["Content-Type"] = "application/json", ["x-fake-chunks"] = "8"}
  local stream = (seq % 3 == 0)
  if r <= #faults then
    for k, v in pairs(faults[r]) do h[k] = v end
    if faults[r]["x-fake-fault"] and faults[r]["x-fake-fault"]:find("stream") then stream = true end
  end
  return wrk.format("POST", "/v1/chat/completions", h, body(stream))
end

function delay()
  return delay_ms
end
