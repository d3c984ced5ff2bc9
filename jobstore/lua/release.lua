-- Give back what a job's input or an uploaded file holds against its key's storage quota, deleting its
-- bytes (and, for a file, its record). Idempotent: the record's `storage_held` goes with the first call.
-- Deletions come first, so this works even when Redis is full (a script that has freed memory may write).
-- KEYS: the record (job or file hash), its bytes   ARGV: '1' to delete the record too
local record, data = KEYS[1], KEYS[2]
local owner = redis.call('HGET', record, 'storage_owner')
local bucket = redis.call('HGET', record, 'storage_bucket')
local held = tonumber(redis.call('HGET', record, 'storage_held') or '')
redis.call('DEL', data)
if ARGV[1] == '1' then
  redis.call('DEL', record)
else
  redis.call('HDEL', record, 'storage_held')
end
if not (owner and bucket and held) then return 0 end
local usage = storage_usage_key(owner)
if redis.call('HEXISTS', usage, bucket) == 1 and redis.call('HINCRBY', usage, bucket, -held) <= 0 then
  redis.call('HDEL', usage, bucket)
end
return held
