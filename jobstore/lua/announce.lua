-- A queued job's place in line changed: append a `queued` event with it, at most once a second and only when
-- it differs from the last one announced, however many followers (and API processes) ask.
-- KEYS: job, stream   ARGV: queue position, estimated start seconds ('' = unknown), ttl, channel
-- Returns 1 when an event was appended.
-- Only a job still waiting in the scheduler is announced: one admitted to the broker starts in a moment.
local job, stream = KEYS[1], KEYS[2]
if redis.call('HGET', job, 'status') ~= 'queued' or redis.call('HGET', job, 'waiting') ~= '1' then return 0 end
local t = now()
local position = ARGV[1]
local before = redis.call('HGET', job, 'position')
local at = tonumber(redis.call('HGET', job, 'position_at') or '')
if before == position or (at and t - at < 1) then return 0 end
redis.call('HSET', job, 'position', position, 'position_at', stamp(t))
local eta = tonumber(ARGV[2])
local data = cjson.encode({
  queue = redis.call('HGET', job, 'queue'),
  service_tier = redis.call('HGET', job, 'tier'),
  queue_position = tonumber(position),
  estimated_start_seconds = eta or cjson.null,
})
emit(job, stream, ARGV[4], tonumber(ARGV[3]), 'queued', data)
return 1
