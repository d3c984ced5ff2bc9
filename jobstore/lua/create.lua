-- Create a job and, when the broker is this Redis, hand it to the scheduler in the same step (it waits
-- there until a worker slot frees, then its message goes onto the queue): a job is never recorded without
-- a way to reach a worker, nor queued without its record.
-- KEYS: job, stream, owner index, queue list ('' = no broker message), idempotency key ('' = none),
--       the owner's active-job set
-- ARGV: job id, ttl, max queue depth (0 = unlimited), idempotency fingerprint, notify channel,
--       broker message, queued-event data, max active jobs of the owner (0 = unlimited),
--       service tier, scheduling principal, its weight, then field/value pairs of the job hash
local job, stream, index, queue, idem, active = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6]
local id, ttl, max_depth = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
local fingerprint, message, queued_data = ARGV[4], ARGV[6], ARGV[7]  -- ARGV[5]: the channel, unused at birth
local max_active = tonumber(ARGV[8])
local tier, principal, weight = ARGV[9], ARGV[10], ARGV[11]

if idem ~= '' then
  local seen = redis.call('GET', idem)
  if seen then
    local seen_id, seen_fp = string.match(seen, '^(%S+) (%S+)$')
    if seen_fp ~= fingerprint then return {'conflict', seen_id} end
    if redis.call('EXISTS', job_key(seen_id)) == 1 then return {'existing', seen_id} end
  end
end

-- The active set is pruned only when it looks full: members whose job ended (or expired) leave it.
if max_active > 0 and redis.call('SCARD', active) >= max_active then
  for _, member in ipairs(redis.call('SMEMBERS', active)) do
    local status = redis.call('HGET', job_key(member), 'status')
    if not status or ENDED[status] then redis.call('SREM', active, member) end
  end
  local count = redis.call('SCARD', active)
  if count >= max_active then return {'quota', tostring(count)} end
end

if queue ~= '' and max_depth > 0 then
  local depth = redis.call('LLEN', queue)
  for _, count in ipairs(redis.call('HVALS', sched_key(queue, 'waiting'))) do depth = depth + tonumber(count) end
  if depth >= max_depth then return {'full', tostring(depth)} end
end

local t = now()
local fields = {}
for i = 12, #ARGV do fields[#fields + 1] = ARGV[i] end
if queue ~= '' then  -- it waits in the scheduler with its message
  fields[#fields + 1] = 'message'
  fields[#fields + 1] = message
  fields[#fields + 1] = 'waiting'
  fields[#fields + 1] = '1'
end
redis.call('HSET', job, 'created_at', stamp(t), 'updated_at', stamp(t), 'queued_at', stamp(t), unpack(fields))
redis.call('EXPIRE', job, ttl)
emit_first(job, stream, ttl, 'queued', queued_data)
redis.call('ZADD', index, t, id)
redis.call('ZREMRANGEBYSCORE', index, '-inf', t - ttl)
redis.call('EXPIRE', index, ttl)
if queue ~= '' then
  sched_enqueue(queue, tier, principal, weight, {id})
  sched_admit(queue, t)
end
if idem ~= '' then redis.call('SET', idem, id .. ' ' .. fingerprint, 'EX', ttl) end
if max_active > 0 then
  redis.call('SADD', active, id)
  redis.call('EXPIRE', active, ttl)
end
return {'created', id, stamp(t)}
