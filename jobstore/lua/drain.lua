-- A worker begins to drain: it stops offering its slots, and the jobs it runs stop counting against its
-- queues' capacity, so that what waits is admitted at once for the other workers' free slots.
-- KEYS: none   ARGV: worker id, then its queues
-- Returns how many jobs were admitted.
local worker = ARGV[1]
local t = now()
local admitted = 0
for i = 2, #ARGV do
  local queue = ARGV[i]
  redis.call('HDEL', sched_key(queue, 'slots'), worker)
  local inflight = sched_key(queue, 'inflight')
  for _, id in ipairs(redis.call('SMEMBERS', inflight)) do
    local job = job_key(id)
    local status = redis.call('HGET', job, 'status')
    if (status == 'running' or status == 'cancelling') and redis.call('HGET', job, 'worker') == worker then
      redis.call('SREM', inflight, id)
    end
  end
  admitted = admitted + sched_admit(queue, t)
end
return admitted
