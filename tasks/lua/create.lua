-- Create a job and, when the broker is this Redis, enqueue its Celery message in the same step:
-- a job is never recorded without its message, nor queued without its record.
-- KEYS: job, stream, owner index, queue list ('' = no broker message), idempotency key ('' = none)
-- ARGV: job id, ttl, max queue depth (0 = unlimited), idempotency fingerprint, notify channel,
--       broker message, queued-event data, then field/value pairs of the job hash
local job, stream, index, queue, idem = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local id, ttl, max_depth = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
local fingerprint, channel, message, queued_data = ARGV[4], ARGV[5], ARGV[6], ARGV[7]

if idem ~= '' then
  local seen = redis.call('GET', idem)
  if seen then
    local seen_id, seen_fp = string.match(seen, '^(%S+) (%S+)$')
    if seen_fp ~= fingerprint then return {'conflict', seen_id} end
    if redis.call('EXISTS', 'speechq:job:' .. seen_id) == 1 then return {'existing', seen_id} end
  end
end

if queue ~= '' and max_depth > 0 then
  local depth = redis.call('LLEN', queue)
  if depth >= max_depth then return {'full', tostring(depth)} end
end

local t = now()
local fields = {}
for i = 8, #ARGV do fields[#fields + 1] = ARGV[i] end
redis.call('HSET', job, 'created_at', stamp(t), 'updated_at', stamp(t), 'queued_at', stamp(t), unpack(fields))
redis.call('EXPIRE', job, ttl)
emit(job, stream, channel, ttl, 'queued', queued_data)
redis.call('ZADD', index, t, id)
redis.call('ZREMRANGEBYSCORE', index, '-inf', t - ttl)
redis.call('EXPIRE', index, ttl)
if queue ~= '' then redis.call('LPUSH', queue, message) end
if idem ~= '' then redis.call('SET', idem, id .. ' ' .. fingerprint, 'EX', ttl) end
return {'created', id, stamp(t)}
