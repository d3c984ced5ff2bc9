-- STORAGE_QUOTA_MB_PER_KEY: what one API key keeps in Redis (uploaded files, job requests and inputs),
-- counted in a hash of time buckets (field: bucket number, value: bytes charged in it). Everything a
-- bucket counts has expired once the bucket is `ttl` seconds past its end, and the bucket goes then,
-- so the usage falls as what it counts expires; `release.lua` gives back what is deleted sooner.
-- KEYS: the key's usage hash
-- ARGV: 'charge', bytes, bucket seconds, ttl, quota (0 = count but never refuse)
--       -> {'ok', bucket, usage after} or {'over', usage}
--       'refund', bucket, bytes (what a charge took, when nothing came of it)
--       'usage', bucket seconds, ttl -> usage
local usage = KEYS[1]
local op = ARGV[1]
local t = now()

local function current(width, ttl)
  local total = 0
  local fields = redis.call('HGETALL', usage)
  for i = 1, #fields, 2 do
    local bucket, bytes = tonumber(fields[i]), tonumber(fields[i + 1])
    if (bucket + 1) * width + ttl <= t then
      redis.call('HDEL', usage, fields[i])
    else
      total = total + bytes
    end
  end
  return total
end

if op == 'usage' then
  return current(tonumber(ARGV[2]), tonumber(ARGV[3]))
end
if op == 'refund' then
  if redis.call('HEXISTS', usage, ARGV[2]) == 1 and redis.call('HINCRBY', usage, ARGV[2], -tonumber(ARGV[3])) <= 0 then
    redis.call('HDEL', usage, ARGV[2])
  end
  return 0
end

local bytes, width, ttl, quota = tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5])
local total = current(width, ttl)
if quota > 0 and total + bytes > quota then return {'over', tostring(total)} end
local bucket = tostring(math.floor(t / width))
redis.call('HINCRBY', usage, bucket, bytes)
local left = redis.call('TTL', usage)
if left < ttl + width then redis.call('EXPIRE', usage, ttl + width) end
return {'ok', bucket, tostring(total + bytes)}
