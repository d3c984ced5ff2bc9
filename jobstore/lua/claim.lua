-- A worker received a job's message. Decide atomically whether it runs it:
--   queued                         -> running (first delivery)
--   running/cancelling, lease live -> someone is on it: do nothing
--   running, lease expired         -> its worker died: run it again, unless the attempt cap is reached
--   cancelling, lease expired      -> cancelled
--   anything else                  -> already finished: do nothing
-- KEYS: job, stream, leases   ARGV: worker, lease seconds, max attempts, ttl, channel, job id
local job, stream, leases = KEYS[1], KEYS[2], KEYS[3]
local worker, lease, max_attempts, ttl, channel =
  ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4]), ARGV[5]
local status = redis.call('HGET', job, 'status')
if not status then return {'skip', 'missing'} end
local t = now()

local function finish(final, error_json)
  set_status(job, final, t)
  redis.call('HSET', job, 'finished_at', stamp(t), 'lease_until', '')
  if error_json then
    redis.call('HSET', job, 'error', error_json)
    emit(job, stream, channel, ttl, 'error', error_json)
  end
  emit(job, stream, channel, ttl, 'done', cjson.encode({status = final}))
  job_ended(job, final, t)
  sched_admit(redis.call('HGET', job, 'queue'), t)  -- its slot is free for the next waiting job
end

local function start(attempts, redelivered)
  set_status(job, 'running', t)
  redis.call('HSET', job, 'worker', worker, 'lease_until', stamp(t + lease), 'attempts', attempts)
  redis.call('ZADD', leases, t + lease, ARGV[6])  -- what the reaper looks through
  -- Its message has come. (Not the script's first write: a full Redis must refuse the claim at its first
  -- write, before anything is changed; a ZREM alone would be let through and open the script to writes.)
  redis.call('ZREM', QUEUED, ARGV[6])
  if not redelivered then redis.call('HSET', job, 'started_at', stamp(t)) end
  emit(job, stream, channel, ttl, 'started', cjson.encode({attempt = attempts, worker = worker, redelivered = redelivered}))
  -- The record comes back with the claim, saving the worker a round trip before it starts.
  return {'run', tostring(attempts), redis.call('HGETALL', job)}
end

local attempts = tonumber(redis.call('HGET', job, 'attempts') or '0')
if status == 'queued' then
  local deadline = tonumber(redis.call('HGET', job, 'expires_at') or '')
  if deadline and t > deadline then
    finish('expired', nil)
    return {'skip', 'expired'}
  end
  return start(attempts + 1, false)
end

if status == 'running' or status == 'cancelling' then
  local lease_until = tonumber(redis.call('HGET', job, 'lease_until') or '')
  if lease_until and lease_until > t then return {'skip', 'busy'} end
  if status == 'cancelling' then
    finish('cancelled', nil)
    return {'skip', 'cancelled'}
  end
  if attempts >= max_attempts then
    finish('failed', cjson.encode({
      type = 'worker_lost',
      message = 'the worker running this job stopped before finishing it, ' .. attempts ..
        ' time(s); the job is not retried again (JOB_MAX_ATTEMPTS=' .. max_attempts .. ')',
    }))
    return {'skip', 'poison'}
  end
  return start(attempts + 1, true)
end
sched_admit(redis.call('HGET', job, 'queue'), t)  -- ended before its message came: its slot is free
return {'skip', status}
