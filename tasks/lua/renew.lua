-- Keep a running job's lease alive while its worker works without emitting events (e.g. loading a model).
-- KEYS: job   ARGV: lease seconds, worker
local status = redis.call('HGET', KEYS[1], 'status')
if status ~= 'running' and status ~= 'cancelling' then return status or 'missing' end
if redis.call('HGET', KEYS[1], 'worker') ~= ARGV[2] then return 'lost' end
redis.call('HSET', KEYS[1], 'lease_until', stamp(now() + tonumber(ARGV[1])))
return status
