-- The reaper's look at queued jobs whose message should long since have reached a worker. kombu takes a
-- message off its queue (BRPOP) before it records it as unacknowledged: a consumer killed between the two
-- loses it, and its job would stay `queued` forever. For each job still queued, look for its message in
-- the queue and among the unacknowledged; if neither holds it, queue a fresh one (a duplicate is harmless:
-- the claim runs a job once). Either way, look again only a wait later.
-- KEYS: queue, unacked hash   ARGV: next look (unix seconds), then job id, message pairs
-- Returns the ids sent again.
local queue, unacked = KEYS[1], KEYS[2]
local again = tonumber(ARGV[1])
-- A Celery message names its task id (the job id) as `"id": "…"`, in kombu's stored JSON either way.
local held = {}
local function note(text)
  for id in string.gmatch(text, '"id": ?"([^"]+)"') do held[id] = true end
end
for _, message in ipairs(redis.call('HVALS', unacked)) do note(message) end
for _, message in ipairs(redis.call('LRANGE', queue, 0, -1)) do note(message) end
local sent = {}
for i = 2, #ARGV, 2 do
  local id, message = ARGV[i], ARGV[i + 1]
  if redis.call('HGET', job_key(id), 'status') ~= 'queued' then
    redis.call('ZREM', QUEUED, id)
  else
    if not held[id] then
      redis.call('LPUSH', queue, message)
      sent[#sent + 1] = id
    end
    redis.call('ZADD', QUEUED, again, id)
  end
end
return sent
