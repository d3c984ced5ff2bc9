-- Cancel many jobs of one owner at once (a batch's lines), as `cancel.lua` cancels one: a queued job ends
-- now (leaving the scheduler's count; its id is dropped from its list when reached), a running one is asked
-- to stop. One call per chunk of ids, six commands a job, so 50,000 waiting lines end in about two seconds.
-- KEYS: none   ARGV: owner, ttl, then job ids
-- Returns the ids of the queued jobs it ended that hold an input (their storage is given back by the caller).
local owner, ttl = ARGV[1], tonumber(ARGV[2])
local t = now()
local done = cjson.encode({status = 'cancelled'})
local with_input = {}
local forgotten = {}
for i = 3, #ARGV do
  local id = ARGV[i]
  local job = job_key(id)
  local status, holder, input, waiting, queue, tier, previous = unpack(redis.call(
    'HMGET', job, 'status', 'owner', 'input_bytes', 'waiting', 'queue', 'tier', 'last_event_id'))
  if status and holder == owner then
    if status == 'queued' then
      if waiting == '1' then  -- as `sched_forget` does, the count gathered and applied once
        redis.call('HDEL', job, 'waiting', 'message')
        local key = sched_key(queue, 'waiting') .. ' ' .. (tier or 'default')
        forgotten[key] = (forgotten[key] or 0) + 1
      end
      -- as `emit` does, with the status written in the same command
      local stream = job .. ':events'
      local event = redis.call('XADD', stream, '*', 'type', 'done', 'data', done)
      redis.call('EXPIRE', stream, ttl)
      redis.call('HSET', job, 'status', 'cancelled', 'cancelled_at', stamp(t), 'updated_at', stamp(t),
        'finished_at', stamp(t), 'last_event_id', event)
      redis.call('PUBLISH', job .. ':notify', (previous or '0-0') .. ' ' .. event .. ' done ' .. done)
      if input then with_input[#with_input + 1] = id end
    elseif status == 'running' then
      set_status(job, 'cancelling', t)
    end
  end
end
sched_forgotten(forgotten)
return with_input
