-- GCRA (a token bucket kept as one timestamp): `rate` requests per `window` seconds sustained, and up to
-- `burst` requests at once. One key per scope (API key or client IP), shared by every API process.
-- KEYS: the bucket
-- ARGV: emission interval in ms (window / rate), burst (bucket size, in requests)
-- Returns {allowed (1/0), remaining, retry after ms, ms until the bucket is full again}
local bucket = KEYS[1]
local interval, burst = tonumber(ARGV[1]), tonumber(ARGV[2])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local tolerance = interval * burst

local tat = tonumber(redis.call('GET', bucket) or now)
if tat < now then tat = now end
local next_tat = tat + interval
local allowed_at = next_tat - tolerance
if now < allowed_at then
  return {0, 0, allowed_at - now, tat - now}
end
redis.call('SET', bucket, next_tat, 'PX', math.max(1, next_tat - now))
return {1, math.floor((tolerance - (next_tat - now)) / interval), 0, next_tat - now}
