-- Shared by every script: the server clock and one way to append an event.
local function now()
  local t = redis.call('TIME')
  return tonumber(t[1]) + tonumber(t[2]) / 1000000
end

local function stamp(t)
  return string.format('%.6f', t)
end

-- Append an event to the job's stream, keep the stream's TTL in step with the job, and publish it to
-- live readers as "<previous id> <id> <type> <data>": a reader whose last id is the previous one can
-- take the event straight from the notification; any other reader reads the stream.
-- `previous` (optional): the job's last event id, when the caller has read it already; `fields` (optional):
-- more field/value pairs of the job's hash to write with the new id, in the same command.
local function emit(job, stream, channel, ttl, etype, data, previous, fields)
  previous = previous or redis.call('HGET', job, 'last_event_id') or '0-0'
  local id = redis.call('XADD', stream, '*', 'type', etype, 'data', data)
  redis.call('EXPIRE', stream, ttl)
  redis.call('HSET', job, 'last_event_id', id, unpack(fields or {}))
  redis.call('PUBLISH', channel, previous .. ' ' .. id .. ' ' .. etype .. ' ' .. data)
  return id
end

-- A new job's first event: nothing came before it, and no reader can be waiting on a job nobody has heard
-- of yet (a reader reads the stream before it waits), so nothing is published.
local function emit_first(job, stream, ttl, etype, data)
  local id = redis.call('XADD', stream, '*', 'type', etype, 'data', data)
  redis.call('EXPIRE', stream, ttl)
  redis.call('HSET', job, 'last_event_id', id)
  return id
end

local function set_status(job, status, t)
  redis.call('HSET', job, 'status', status, status .. '_at', stamp(t), 'updated_at', stamp(t))
end

-- Put an event in the webhook outbox, in the same script as what it reports: it is delivered (at least
-- once) from here by the API's delivery loop (`api/webhooks/delivery.py`). An event already there stays.
local function outbox_put(event_id, url, owner, subject, etype, body, t)
  local record = webhook_key(event_id)
  if redis.call('EXISTS', record) == 1 then return end
  redis.call('HSET', record, 'id', event_id, 'url', url, 'owner', owner, 'subject', subject, 'type', etype,
    'body', body, 'created_at', stamp(t), 'attempts', '0', 'state', 'pending')
  redis.call('EXPIRE', record, WEBHOOK_KEEP_SECONDS)
  redis.call('ZADD', WEBHOOKS_DUE, t, event_id)
  redis.call('ZADD', WEBHOOKS_PENDING, t, event_id)
end

-- A job has just ended as `status` (its error, if any, already stored): queue its webhook's event when it
-- asked for one (`webhook_url`) on this status (`webhook_events`, space-separated). The event's id follows
-- from the job's, so a job can never have two; its body names the job, never its result.
local function job_ended(job, status, t)
  local url, wanted, id, kind, principal, err = unpack(redis.call(
    'HMGET', job, 'webhook_url', 'webhook_events', 'id', 'kind', 'principal', 'error'))
  if not url or not string.find(' ' .. (wanted or '') .. ' ', ' ' .. status .. ' ', 1, true) then return end
  local event_id = 'evt_' .. string.sub(id, 5)  -- `job_<token>` -> `evt_<token>`
  local data = {id = id, kind = kind, status = status}
  if err then
    local parsed, decoded = pcall(cjson.decode, err)  -- never let a malformed error stop the job's end
    if parsed then data.error = decoded end
  end
  local etype = 'job.' .. status
  local body = cjson.encode({object = 'event', id = event_id, type = etype, created_at = math.floor(t), data = data})
  outbox_put(event_id, url, principal or '', id, etype, body, t)
  redis.call('HSET', job, 'webhook_event', event_id)
end
