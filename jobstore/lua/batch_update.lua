-- Replace a batch's record only if nobody has changed it since it was read (its `rev`): API processes
-- sweeping batches at once, or a sweep and a cancel, can never both move a batch out of the same state.
-- KEYS: batch, open batches
-- ARGV: batch id, rev read, new record (JSON), finalizer lease (unix seconds; '' = none), '1' while still open,
--       then, when the change ends the batch and its webhook wants that: event id, url, owner, type, body
-- Returns 1 when the record was replaced, 0 when it had changed (or is gone).
-- A batch stored by the previous version has no `rev`: it reads as '0'.
local batch, open = KEYS[1], KEYS[2]
if redis.call('EXISTS', batch) == 0 then return 0 end
if (redis.call('HGET', batch, 'rev') or '0') ~= ARGV[2] then return 0 end
redis.call('HSET', batch, 'record', ARGV[3], 'rev', tostring(tonumber(ARGV[2]) + 1))
if ARGV[4] == '' then
  redis.call('HDEL', batch, 'lease')
else
  redis.call('HSET', batch, 'lease', ARGV[4])
end
if ARGV[5] ~= '1' then redis.call('ZREM', open, ARGV[1]) end
if (ARGV[6] or '') ~= '' then outbox_put(ARGV[6], ARGV[7], ARGV[8], ARGV[1], ARGV[9], ARGV[10], now()) end
return 1
