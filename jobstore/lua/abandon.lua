-- A job recorded as queued whose message the broker refused: end it `failed`, so it never waits forever
-- for a message that will not come. Anything past `queued` is left as it is.
-- KEYS: job, stream   ARGV: error json, ttl, channel
local job, stream = KEYS[1], KEYS[2]
local status = redis.call('HGET', job, 'status')
if status ~= 'queued' then return status or 'missing' end
local t = now()
set_status(job, 'failed', t)
redis.call('HSET', job, 'finished_at', stamp(t), 'error', ARGV[1])
emit(job, stream, ARGV[3], tonumber(ARGV[2]), 'error', ARGV[1])
emit(job, stream, ARGV[3], tonumber(ARGV[2]), 'done', cjson.encode({status = 'failed'}))
job_ended(job, 'failed', t)
return 'failed'
