-- A draining worker hands back a job it could not finish within WORKER_DRAIN_SECONDS: the lease lapses now,
-- so the next worker to receive the message (requeued by the caller at once) takes it over as a redelivery.
-- Its stream says nothing here: the next claim's `started` event says `redelivered`.
-- KEYS: job, leases   ARGV: worker, job id
local job, leases = KEYS[1], KEYS[2]
local worker, id = ARGV[1], ARGV[2]
local status = redis.call('HGET', job, 'status')
if status ~= 'running' then return status or 'missing' end  -- ended, or being cancelled: not handed back
if redis.call('HGET', job, 'worker') ~= worker then return 'lost' end
local t = now()
-- No worker, and a lease already past: a renewal in flight from this worker finds the job no longer its own.
redis.call('HSET', job, 'worker', '', 'lease_until', stamp(t - 1))
redis.call('ZREM', leases, id)
redis.call('SADD', sched_key(redis.call('HGET', job, 'queue'), 'inflight'), id)  -- on the broker again
return 'handed_back'
