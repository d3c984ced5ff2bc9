-- The scheduler (tasks/scheduler.py states the policy): waiting jobs, and their admission to the broker.
-- Per queue: `tiers` (zset: tier -> its pass), `vt` (hash: the pass last served, of the tiers and within
-- each tier), `waiting` (hash: tier -> jobs waiting), `inflight` (set: admitted jobs not yet ended),
-- `slots` (hash: worker -> "<slots> <advert expiry>"), `service` (hash: mean seconds a job runs); per tier
-- `<tier>:flows` (zset: principal -> its pass), `<tier>:weights` and `<tier>:p:<principal>` (its jobs, in
-- order); `last` and `<tier>:last` keep each tier's and principal's pass while it has nothing waiting.
-- TIER_WEIGHT and TIER_MEMBER come from tasks/scheduler.py.
local ENDED = {succeeded = true, failed = true, cancelled = true, expired = true}
local MAX_SKIPS = 20000  -- cancelled jobs dropped per admission, so a cancelled 50,000-line batch never stalls Redis

-- Jobs `ids` (their records already marked `waiting`) join the end of their principal's line at `tier`.
local function sched_enqueue(queue, tier, principal, weight, ids)
  local vt = sched_key(queue, 'vt')
  local flows = sched_key(queue, tier .. ':flows')
  local list = sched_key(queue, tier .. ':p:' .. principal)
  for first = 1, #ids, 1000 do redis.call('RPUSH', list, unpack(ids, first, math.min(first + 999, #ids))) end
  redis.call('HSET', sched_key(queue, tier .. ':weights'), principal, weight)
  -- A principal (or tier) that had nothing waiting joins at the pass last served, or at its own pass if that
  -- is later (it was served ahead while it had work): it is neither owed the turns it did not use, nor sent
  -- behind those who kept waiting, nor let jump the line by emptying its queue and coming back.
  if not redis.call('ZSCORE', flows, principal) then
    local last = tonumber(redis.call('HGET', sched_key(queue, tier .. ':last'), principal) or '0')
    redis.call('ZADD', flows, math.max(last, tonumber(redis.call('HGET', vt, tier) or '0')), principal)
  end
  local tiers = sched_key(queue, 'tiers')
  if not redis.call('ZSCORE', tiers, TIER_MEMBER[tier]) then
    local last = tonumber(redis.call('HGET', sched_key(queue, 'last'), tier) or '0')
    redis.call('ZADD', tiers, math.max(last, tonumber(redis.call('HGET', vt, 'tiers') or '0')), TIER_MEMBER[tier])
  end
  redis.call('HINCRBY', sched_key(queue, 'waiting'), tier, #ids)
end

-- A waiting job leaves the scheduler's count (cancelled); its id is dropped from its list when reached.
-- `counts` (optional) gathers the decrements by queue and tier, for the caller to apply at once (with
-- `sched_forgotten`); `read` (optional) is the job's {waiting, queue, tier} when the caller has them.
local function sched_forget(job, counts, read)
  local waiting, queue, tier = unpack(read or redis.call('HMGET', job, 'waiting', 'queue', 'tier'), 1, 3)
  if waiting ~= '1' then return end
  redis.call('HDEL', job, 'waiting', 'message')
  local key = sched_key(queue, 'waiting') .. ' ' .. (tier or 'default')
  if counts then
    counts[key] = (counts[key] or 0) + 1
  else
    redis.call('HINCRBY', sched_key(queue, 'waiting'), tier or 'default', -1)
  end
end

local function sched_forgotten(counts)
  for key, count in pairs(counts) do
    local hash, tier = string.match(key, '^(%S+) (%S+)$')
    redis.call('HINCRBY', hash, tier, -count)
  end
end

-- Slots of the live workers serving the queue (their adverts expire with their heartbeat).
local function sched_capacity(queue, t)
  local slots = sched_key(queue, 'slots')
  local total = 0
  local entries = redis.call('HGETALL', slots)
  for i = 1, #entries, 2 do
    local n, expires = string.match(entries[i + 1], '^(%d+) (%S+)$')
    if n and tonumber(expires) >= t then total = total + tonumber(n) else redis.call('HDEL', slots, entries[i]) end
  end
  return total
end

-- Admitted jobs not yet ended; ended ones are pruned only when the set looks full.
local function sched_inflight(queue, capacity)
  local inflight = sched_key(queue, 'inflight')
  local count = redis.call('SCARD', inflight)
  if count >= capacity and count > 0 then
    for _, id in ipairs(redis.call('SMEMBERS', inflight)) do
      local status = redis.call('HGET', job_key(id), 'status')
      if not status or ENDED[status] then redis.call('SREM', inflight, id) end
    end
    count = redis.call('SCARD', inflight)
  end
  return count
end

-- The next job to admit: the tier with the lowest pass, then its principal with the lowest pass (ties: the
-- higher tier, then the principal's name). Each pick moves both passes on by 1 / weight.
local function sched_pick(queue)
  local tiers, vt = sched_key(queue, 'tiers'), sched_key(queue, 'vt')
  local skips = 0
  while skips < MAX_SKIPS do
    local top = redis.call('ZRANGE', tiers, 0, 0, 'WITHSCORES')
    if #top == 0 then return nil end
    local member, tier_pass = top[1], tonumber(top[2])
    local tier = string.sub(member, 3)
    local flows, weights = sched_key(queue, tier .. ':flows'), sched_key(queue, tier .. ':weights')
    local head = redis.call('ZRANGE', flows, 0, 0, 'WITHSCORES')
    if #head == 0 then
      redis.call('ZREM', tiers, member)
    else
      local principal, flow_pass = head[1], tonumber(head[2])
      local list = sched_key(queue, tier .. ':p:' .. principal)
      local id = redis.call('LPOP', list)
      local live = id and redis.call('HGET', job_key(id), 'waiting') == '1'
      if live then
        local weight = tonumber(redis.call('HGET', weights, principal) or '1')
        redis.call('HSET', vt, tier, flow_pass, 'tiers', tier_pass)
        redis.call('ZADD', flows, flow_pass + 1 / weight, principal)
        redis.call('ZADD', tiers, tier_pass + 1 / TIER_WEIGHT[tier], member)
        redis.call('HSET', sched_key(queue, tier .. ':last'), principal, flow_pass + 1 / weight)
        redis.call('HSET', sched_key(queue, 'last'), tier, tier_pass + 1 / TIER_WEIGHT[tier])
      else
        skips = skips + 1  -- cancelled (or expired) while it waited: dropped, nobody's turn is spent
      end
      if redis.call('LLEN', list) == 0 then
        redis.call('ZREM', flows, principal)
        redis.call('HDEL', weights, principal)
        if redis.call('ZCARD', flows) == 0 then redis.call('ZREM', tiers, member) end
      end
      if live then return id, tier end
    end
  end
  return nil
end

-- Move waiting jobs onto the broker's queue while the queue's workers have free slots; returns how many.
local function sched_admit(queue, t)
  if not queue or queue == '' then return 0 end
  local capacity = sched_capacity(queue, t)
  local inflight = sched_inflight(queue, capacity)
  local admitted = 0
  while inflight < capacity do
    local id, tier = sched_pick(queue)
    if not id then break end
    local job = job_key(id)
    local message = redis.call('HGET', job, 'message')
    redis.call('HINCRBY', sched_key(queue, 'waiting'), tier, -1)
    redis.call('HDEL', job, 'waiting', 'message')
    redis.call('HSET', job, 'admitted_at', stamp(t))
    if message then
      redis.call('LPUSH', queue, message)
      redis.call('ZADD', QUEUED, t, id)  -- the reaper's watch for a message a dying consumer lost
      redis.call('SADD', sched_key(queue, 'inflight'), id)
      inflight = inflight + 1
      admitted = admitted + 1
    end
  end
  return admitted
end

-- A job of the queue ran for `seconds`: the queue's mean service time (an exponential average, for ETAs).
local function sched_observe(queue, seconds)
  if not queue or not seconds or seconds < 0 then return end
  local service = sched_key(queue, 'service')
  local mean = tonumber(redis.call('HGET', service, 'mean') or '')
  mean = mean and (0.8 * mean + 0.2 * seconds) or seconds
  redis.call('HSET', service, 'mean', string.format('%.6f', mean))
end
