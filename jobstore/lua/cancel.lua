-- Cancel on behalf of the job's owner: a queued job ends now (its message, or its place in the scheduler, is
-- skipped when reached),
-- a running one is asked to stop and its worker ends it as `cancelled` within a token or two.
-- KEYS: job, stream   ARGV: owner, ttl, channel
local job, stream = KEYS[1], KEYS[2]
local status = redis.call('HGET', job, 'status')
if not status or redis.call('HGET', job, 'owner') ~= ARGV[1] then return 'missing' end
local t = now()
if status == 'queued' then
  sched_forget(job)  -- still waiting for a slot: it leaves the scheduler's count now, its list when reached
  set_status(job, 'cancelled', t)
  redis.call('HSET', job, 'finished_at', stamp(t))
  emit(job, stream, ARGV[3], tonumber(ARGV[2]), 'done', cjson.encode({status = 'cancelled'}))
  job_ended(job, 'cancelled', t)
  return 'cancelled'
end
if status == 'running' then
  set_status(job, 'cancelling', t)
  return 'cancelling'
end
return status
