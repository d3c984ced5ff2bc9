-- Take up to ARGV[2] webhook events whose try is due, each for ARGV[1] seconds: another API process takes
-- an event only once that has passed without its try being settled (its deliverer died). An event whose
-- record has expired leaves the outbox.
-- KEYS: none   ARGV: claim seconds, how many
-- Returns, per event, its record as field/value pairs.
local t = now()
local taken = {}
for _, id in ipairs(redis.call('ZRANGEBYSCORE', WEBHOOKS_DUE, '-inf', t, 'LIMIT', 0, tonumber(ARGV[2]))) do
  local record = webhook_key(id)
  if redis.call('EXISTS', record) == 0 then
    redis.call('ZREM', WEBHOOKS_DUE, id)
    redis.call('ZREM', WEBHOOKS_PENDING, id)
  else
    redis.call('ZADD', WEBHOOKS_DUE, t + tonumber(ARGV[1]), id)
    taken[#taken + 1] = redis.call('HGETALL', record)
  end
end
return taken
