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
