-- Record how a try at delivering a webhook event went:
--   delivered -> it leaves the outbox
--   retry     -> `failing`, tried again at ARGV[3] (unix seconds)
--   failed    -> given up (a 4xx, a refused address, or past WEBHOOK_RETRY_HOURS): it leaves the outbox
-- An event already delivered or given up (by another process whose try overlapped) stays as it is.
-- KEYS: none   ARGV: event id, outcome, next try, last error ('' none), HTTP status ('' none)
local id, outcome = ARGV[1], ARGV[2]
local record = webhook_key(id)
local state = redis.call('HGET', record, 'state')
if not state then
  redis.call('ZREM', WEBHOOKS_DUE, id)
  redis.call('ZREM', WEBHOOKS_PENDING, id)
  return 'missing'
end
if state == 'delivered' or state == 'failed' then return state end
local t = now()
redis.call('HINCRBY', record, 'attempts', 1)
redis.call('HSET', record, 'last_attempt_at', stamp(t), 'last_status', ARGV[5], 'last_error', ARGV[4])
if outcome == 'retry' then
  redis.call('HSET', record, 'state', 'failing', 'next_attempt_at', ARGV[3])
  redis.call('ZADD', WEBHOOKS_DUE, tonumber(ARGV[3]), id)
  return 'failing'
end
redis.call('HSET', record, 'state', outcome, outcome .. '_at', stamp(t))
redis.call('HDEL', record, 'next_attempt_at')
redis.call('ZREM', WEBHOOKS_DUE, id)
redis.call('ZREM', WEBHOOKS_PENDING, id)
return outcome
