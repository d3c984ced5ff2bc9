-- End a running job: record its result or error and append `result`/`error` then the terminal `done`.
-- KEYS: job, stream   ARGV: final status, result json ('' none), error json ('' none), ttl, channel, worker
local job, stream = KEYS[1], KEYS[2]
local final, result, err, ttl, channel = ARGV[1], ARGV[2], ARGV[3], tonumber(ARGV[4]), ARGV[5]
local status = redis.call('HGET', job, 'status')
if status ~= 'running' and status ~= 'cancelling' then return status or 'missing' end
if redis.call('HGET', job, 'worker') ~= ARGV[6] then return 'lost' end
local t = now()
set_status(job, final, t)
redis.call('HSET', job, 'finished_at', stamp(t), 'lease_until', '')
if result ~= '' then
  redis.call('HSET', job, 'result', result)
  emit(job, stream, channel, ttl, 'result', result)
end
if err ~= '' then
  redis.call('HSET', job, 'error', err)
  emit(job, stream, channel, ttl, 'error', err)
end
emit(job, stream, channel, ttl, 'done', cjson.encode({status = final}))
job_ended(job, final, t)
local queue = redis.call('HGET', job, 'queue')
if final == 'succeeded' then  -- a run cut short (cancelled, failed) says nothing of how long jobs take
  sched_observe(queue, t - (tonumber(redis.call('HGET', job, 'running_at') or '') or t))
end
sched_admit(queue, t)  -- its slot is free for the next waiting job
return final
