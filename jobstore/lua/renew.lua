-- Keep a running job's lease alive while its worker works without emitting events (e.g. loading a model).
-- KEYS: job, leases   ARGV: lease seconds, worker, job id
local status = redis.call('HGET', KEYS[1], 'status')
if status ~= 'running' and status ~= 'cancelling' then return status or 'missing' end
if redis.call('HGET', KEYS[1], 'worker') ~= ARGV[2] then return 'lost' end
local lease_until = now() + tonumber(ARGV[1])
redis.call('HSET', KEYS[1], 'lease_until', stamp(lease_until))
redis.call('ZADD', KEYS[2], lease_until, ARGV[3])
return status
