-- Shared by every script: the server clock and one way to append an event.
local function now()
  local t = redis.call('TIME')
  return tonumber(t[1]) + tonumber(t[2]) / 1000000
end

local function stamp(t)
  return string.format('%.6f', t)
end

-- Append an event to the job's stream, keep the stream's TTL in step with the job, wake live readers.
local function emit(stream, channel, ttl, etype, data)
  local id = redis.call('XADD', stream, '*', 'type', etype, 'data', data)
  redis.call('EXPIRE', stream, ttl)
  redis.call('PUBLISH', channel, id)
  return id
end

local function set_status(job, status, t)
  redis.call('HSET', job, 'status', status, status .. '_at', stamp(t), 'updated_at', stamp(t))
end
