-- A running job's worker appends an event; this also renews its lease and tells it the job's status,
-- so a cancel is noticed on the next token without another round trip.
-- KEYS: job, stream   ARGV: type, data, ttl, channel, lease seconds, worker
local job, stream = KEYS[1], KEYS[2]
local status = redis.call('HGET', job, 'status')
if status ~= 'running' and status ~= 'cancelling' then return {status or 'missing', ''} end
if redis.call('HGET', job, 'worker') ~= ARGV[6] then return {'lost', ''} end
local t = now()
local id = emit(job, stream, ARGV[4], tonumber(ARGV[3]), ARGV[1], ARGV[2])
redis.call('HSET', job, 'lease_until', stamp(t + tonumber(ARGV[5])))
if ARGV[1] == 'progress' then redis.call('HSET', job, 'progress', ARGV[2]) end
return {status, id}
