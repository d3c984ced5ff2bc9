-- Create several jobs on one queue at once (a batch's lines), all or none, and hand them to the scheduler
-- (flex by default: they are admitted to the broker as worker slots free). The queue depth is checked for
-- all of them together, as `create.lua` checks it for one; a batch's lines do not count against
-- MAX_ACTIVE_JOBS_PER_KEY (what they may take of the workers is the scheduler's to share), only against
-- the storage quota. A large batch comes in several calls, a chunk of lines each.
-- KEYS: owner index of the jobs, queue list ('' = no broker message)
-- ARGV: ttl, max queue depth (0 = unlimited), queued-event data, service tier, scheduling principal, its
--       weight, m and m field/value items every job's hash has, then for each job: id, broker message, n,
--       and n field/value items of its own
local index, queue = KEYS[1], KEYS[2]
local ttl, max_depth, queued_data = tonumber(ARGV[1]), tonumber(ARGV[2]), ARGV[3]
local tier, principal, weight = ARGV[4], ARGV[5], ARGV[6]
local shared_last = 7 + tonumber(ARGV[7])

local jobs = {}
local i = shared_last + 1
while i <= #ARGV do
  local n = tonumber(ARGV[i + 2])
  jobs[#jobs + 1] = {id = ARGV[i], message = ARGV[i + 1], first = i + 3, last = i + 2 + n}
  i = i + 3 + n
end
local count = #jobs

if queue ~= '' and max_depth > 0 then
  local depth = redis.call('LLEN', queue)
  for _, waiting in ipairs(redis.call('HVALS', sched_key(queue, 'waiting'))) do depth = depth + tonumber(waiting) end
  if depth + count > max_depth then return {'full', tostring(depth)} end
end

local t = now()
local ids = {}
local scored = {}
local shared = {'created_at', stamp(t), 'updated_at', stamp(t), 'queued_at', stamp(t)}
for k = 8, shared_last do shared[#shared + 1] = ARGV[k] end
for _, spec in ipairs(jobs) do
  local job = job_key(spec.id)
  local fields = {unpack(shared)}
  for k = spec.first, spec.last do fields[#fields + 1] = ARGV[k] end
  if queue ~= '' then  -- it waits in the scheduler with its message
    fields[#fields + 1] = 'message'
    fields[#fields + 1] = spec.message
    fields[#fields + 1] = 'waiting'
    fields[#fields + 1] = '1'
  end
  redis.call('HSET', job, unpack(fields))
  redis.call('EXPIRE', job, ttl)
  emit_first(job, job .. ':events', ttl, 'queued', queued_data)
  ids[#ids + 1] = spec.id
  scored[#scored + 1] = t
  scored[#scored + 1] = spec.id
end
for first = 1, #scored, 1000 do redis.call('ZADD', index, unpack(scored, first, math.min(first + 999, #scored))) end
if queue ~= '' then
  sched_enqueue(queue, tier, principal, weight, ids)
  sched_admit(queue, t)
end
redis.call('ZREMRANGEBYSCORE', index, '-inf', t - ttl)
redis.call('EXPIRE', index, ttl)
return {'created', tostring(count), stamp(t)}
