-- Create several jobs on one queue at once (a batch's lines), all or none, and hand them to the scheduler
-- (flex by default: they are admitted to the broker as worker slots free). The queue depth is checked for
-- all of them together, as `create.lua` checks it for one; a batch's lines do not count against
-- MAX_ACTIVE_JOBS_PER_KEY (what they may take of the workers is the scheduler's to share), only against
-- the storage quota. A large batch comes in several calls, a chunk of lines each.
-- KEYS: owner index of the jobs, queue list ('' = no broker message)
-- ARGV: ttl, max queue depth (0 = unlimited), queued-event data, service tier, scheduling principal, its
--       weight, then for each job: id, notify channel, broker message, n, and n field/value items of its hash
local index, queue = KEYS[1], KEYS[2]
local ttl, max_depth, queued_data = tonumber(ARGV[1]), tonumber(ARGV[2]), ARGV[3]
local tier, principal, weight = ARGV[4], ARGV[5], ARGV[6]

local jobs = {}
local i = 7
while i <= #ARGV do
  local n = tonumber(ARGV[i + 3])
  jobs[#jobs + 1] = {id = ARGV[i], channel = ARGV[i + 1], message = ARGV[i + 2], first = i + 4, last = i + 3 + n}
  i = i + 4 + n
end
local count = #jobs

if queue ~= '' and max_depth > 0 then
  local depth = redis.call('LLEN', queue)
  for _, waiting in ipairs(redis.call('HVALS', sched_key(queue, 'waiting'))) do depth = depth + tonumber(waiting) end
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
    redis.call('HSET', job, 'message', spec.message)
    sched_enqueue(queue, tier, principal, weight, spec.id)
  end
end
if queue ~= '' then sched_admit(queue, t) end
redis.call('ZREMRANGEBYSCORE', index, '-inf', t - ttl)
redis.call('EXPIRE', index, ttl)
return {'created', tostring(count), stamp(t)}
