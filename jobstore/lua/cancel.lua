-- Cancel on behalf of the job's owner: a queued job ends now (its message is skipped when it arrives),
-- a running one is asked to stop and its worker ends it as `cancelled` within a token or two.
-- KEYS: job, stream   ARGV: owner, ttl, channel
local job, stream = KEYS[1], KEYS[2]
local status = redis.call('HGET', job, 'status')
if not status or redis.call('HGET', job, 'owner') ~= ARGV[1] then return 'missing' end
local t = now()
if status == 'queued' then
  set_status(job, 'cancelled', t)
  redis.call('HSET', job, 'finished_at', stamp(t))
  emit(job, stream, ARGV[3], tonumber(ARGV[2]), 'done', cjson.encode({status = 'cancelled'}))
  return 'cancelled'
end
if status == 'running' then
  set_status(job, 'cancelling', t)
  return 'cancelling'
end
return status
