-- Create several jobs on one queue at once (a batch's lines), all or none: the active-job quota and the
-- queue depth are checked for all of them together, as `create.lua` checks them for one, so a batch
-- can never take a key past MAX_ACTIVE_JOBS_PER_KEY nor fill a queue past QUEUE_MAX_DEPTH.
-- KEYS: owner index of the jobs, queue list ('' = no broker message), the active-job set they count in
--       (the API key's own, whoever owns the jobs)
-- ARGV: ttl, max queue depth (0 = unlimited), max active jobs (0 = unlimited), queued-event data,
--       then for each job: id, notify channel, broker message, n, and n field/value items of its hash
local index, queue, active = KEYS[1], KEYS[2], KEYS[3]
local ttl, max_depth, max_active, queued_data = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3]), ARGV[4]
local ended = {succeeded = true, failed = true, cancelled = true, expired = true}

local jobs = {}
local i = 5
while i <= #ARGV do
  local n = tonumber(ARGV[i + 3])
  jobs[#jobs + 1] = {id = ARGV[i], channel = ARGV[i + 1], message = ARGV[i + 2], first = i + 4, last = i + 3 + n}
  i = i + 4 + n
end
local count = #jobs

if max_active > 0 then
  if redis.call('SCARD', active) + count > max_active then
    for _, member in ipairs(redis.call('SMEMBERS', active)) do
      local status = redis.call('HGET', job_key(member), 'status')
      if not status or ended[status] then redis.call('SREM', active, member) end
    end
  end
  local held = redis.call('SCARD', active)
  if held + count > max_active then return {'quota', tostring(held)} end
end

if queue ~= '' and max_depth > 0 then
  local depth = redis.call('LLEN', queue)
  if depth + count > max_depth then return {'full', tostring(depth)} end
end

local t = now()
for _, spec in ipairs(jobs) do
  local job = job_key(spec.id)
  redis.call('HSET', job, 'created_at', stamp(t), 'updated_at', stamp(t), 'queued_at', stamp(t),
    unpack(ARGV, spec.first, spec.last))
  redis.call('EXPIRE', job, ttl)
  emit(job, job .. ':events', spec.channel, ttl, 'queued', queued_data)
  redis.call('ZADD', index, t, spec.id)
  if queue ~= '' then
    redis.call('LPUSH', queue, spec.message)
    redis.call('ZADD', QUEUED, t, spec.id)
  end
  if max_active > 0 then redis.call('SADD', active, spec.id) end
end
redis.call('ZREMRANGEBYSCORE', index, '-inf', t - ttl)
redis.call('EXPIRE', index, ttl)
if max_active > 0 then redis.call('EXPIRE', active, ttl) end
return {'created', tostring(count), stamp(t)}
