-- Cancel many jobs of one owner at once (a batch's lines), as `cancel.lua` cancels one: a queued job ends
-- now (leaving the scheduler's count; its id is dropped from its list when reached), a running one is asked
-- to stop. One call per chunk of ids, few commands a job (what it reads, it reads once).
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
      sched_forget(job, forgotten, {waiting, queue, tier})
      emit(job, job .. ':events', job .. ':notify', ttl, 'done', done, previous or '0-0', {
        'status', 'cancelled', 'cancelled_at', stamp(t), 'updated_at', stamp(t), 'finished_at', stamp(t)})
      job_ended(job, 'cancelled', t)
      if input then with_input[#with_input + 1] = id end
    elseif status == 'running' then
      set_status(job, 'cancelling', t)
    end
  end
end
sched_forgotten(forgotten)
return with_input
