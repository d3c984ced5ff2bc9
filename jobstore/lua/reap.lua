-- The reaper's look at one job of the lease index: a running job whose lease ran out long ago and whose
-- message no queue or worker holds (it was acknowledged when Redis went away under its worker, say)
-- would stay `running` forever. Put a fresh message for it on its queue; the claim then runs it again
-- (or fails it at the attempt cap, or ends a cancel), exactly as for a redelivery.
-- KEYS: job, leases, queue, unacked hash   ARGV: job id, grace seconds, message
-- Returns 'ended' (dropped from the index), 'live' (its lease holds), 'held' (a message exists), 'sent'.
local job, leases, queue, unacked = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local job_id, grace, message = ARGV[1], tonumber(ARGV[2]), ARGV[3]
local status = redis.call('HGET', job, 'status')
if status ~= 'running' and status ~= 'cancelling' then
  redis.call('ZREM', leases, job_id)
  return 'ended'
end
local t = now()
local lease_until = tonumber(redis.call('HGET', job, 'lease_until') or '') or 0
if lease_until + grace > t then
  redis.call('ZADD', leases, lease_until, job_id)
  return 'live'
end
-- A Celery message names its task id (the job id) in its headers, which kombu stores as plain JSON.
local needles = {'"id": "' .. job_id .. '"', '"id":"' .. job_id .. '"'}
local function holds(text)
  return string.find(text, needles[1], 1, true) or string.find(text, needles[2], 1, true)
end
for _, held in ipairs(redis.call('HVALS', unacked)) do
  if holds(held) then return 'held' end
end
for _, queued in ipairs(redis.call('LRANGE', queue, 0, -1)) do
  if holds(queued) then return 'held' end
end
redis.call('LPUSH', queue, message)
redis.call('ZADD', leases, t + grace, job_id)  -- look again only after the claim has had its chance
return 'sent'
