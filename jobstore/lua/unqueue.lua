-- Take the messages of ended jobs (a cancelled batch's) off a queue, so they stop counting against
-- QUEUE_MAX_DEPTH and no worker receives them; one a worker already holds is skipped by `claim.lua`.
-- One pass over the queue (at most QUEUE_MAX_DEPTH messages), however many jobs are named: matches are
-- overwritten with a marker in place, then the markers removed at once.
-- KEYS: queue   ARGV: job ids (a message is taken only if its job is no longer queued or running)
local queue = KEYS[1]
local wanted = {}
for _, id in ipairs(ARGV) do wanted[id] = true end
local live = {queued = true, running = true, cancelling = true}
local found = 0
local length = redis.call('LLEN', queue)
local chunk = 500
for first = 0, length - 1, chunk do
  for offset, message in ipairs(redis.call('LRANGE', queue, first, first + chunk - 1)) do
    -- kombu's envelope: the task id is the first "id" (in `headers`; `body` is base64, without quotes)
    local id = string.match(message, '"id": "([^"]+)"')
    if id and wanted[id] and not live[redis.call('HGET', job_key(id), 'status') or ''] then
      redis.call('LSET', queue, first + offset - 1, UNQUEUED)
      found = found + 1
    end
  end
end
if found > 0 then redis.call('LREM', queue, 0, UNQUEUED) end
return found
