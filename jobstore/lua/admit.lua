-- A worker's heartbeat: record the slots it offers each of its queues (until its advert expires), and admit
-- waiting jobs to any of them with a slot free (jobs are admitted as they are created and as others end;
-- this catches up on whatever those missed: a worker that just started, a job that ended elsewhere).
-- KEYS: none   ARGV: worker id, advert expiry (unix seconds), then queue, slots pairs (0 slots: withdraw)
-- Returns how many jobs were admitted.
local worker, expires = ARGV[1], ARGV[2]
local t = now()
local admitted = 0
for i = 3, #ARGV, 2 do
  local queue, slots = ARGV[i], tonumber(ARGV[i + 1])
  if slots > 0 then
    redis.call('HSET', sched_key(queue, 'slots'), worker, slots .. ' ' .. expires)
  else
    redis.call('HDEL', sched_key(queue, 'slots'), worker)
  end
  admitted = admitted + sched_admit(queue, t)
end
return admitted
