-- Cancel many jobs of one owner at once (a batch's lines), as `cancel.lua` cancels one: a queued job ends
-- now (leaving the scheduler's count; its id is dropped from its list when reached), a running one is asked
-- to stop. One call per chunk of ids, so cancelling 50,000 waiting lines takes about a second.
-- KEYS: none   ARGV: owner, ttl, then job ids
-- Returns the ids of the queued jobs it ended that hold an input (their storage is given back by the caller).
local owner, ttl = ARGV[1], tonumber(ARGV[2])
local t = now()
local with_input = {}
for i = 3, #ARGV do
  local id = ARGV[i]
  local job = job_key(id)
  local status = redis.call('HGET', job, 'status')
  if status and redis.call('HGET', job, 'owner') == owner then
    if status == 'queued' then
      sched_forget(job)
      set_status(job, 'cancelled', t)
      redis.call('HSET', job, 'finished_at', stamp(t))
      emit(job, job .. ':events', job .. ':notify', ttl, 'done', cjson.encode({status = 'cancelled'}))
      if redis.call('HEXISTS', job, 'input_bytes') == 1 then with_input[#with_input + 1] = id end
    elseif status == 'running' then
      set_status(job, 'cancelling', t)
    end
  end
end
return with_input
