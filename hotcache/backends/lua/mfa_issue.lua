-- Issue an MFA code in one step: resend cooldown, hourly send cap, then replace the code record.
-- KEYS[1] the user's hash for this purpose ("...:code"): the code record (d = HMAC digest, a = attempts,
--         iat = issue time in app-clock ms, st = live|used|burned, s = hotcache.signing signature of d and iat,
--         made in Python) and, beside it, c = resend cooldown until, n = sends in the hour window ending at nw,
--         f = the user's failures in the window ending at fw (written by mfa_verify.lua). Times: app-clock ms.
-- ARGV: digest, issued_at_ms (= now), ttl_ms, cooldown_ms, hourly_cap, hour_ms, signature, failure window ms
-- Returns {1, 0, '', bad} when issued, {0, retry_after_ms, 'cooldown'|'hourly_cap', bad} when refused;
-- bad is 'sends' when a cooldown or send field was not a number (reset here; Python counts it as tampered).
-- On a full Redis (maxmemory, noeviction) every path that writes is refused at its first write, always a
-- command that may grow memory, so the script is refused whole and the issue takes MongoDB, as verify does.
-- Billed: HMGET, HSET, PEXPIRE. One key, so one slot on Redis Cluster. No value read here can make the script
-- fail or hold a send back for longer than the configured windows (a stretched window is cut back to them).
local now, ttl, cool = tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local cap, hour, window = tonumber(ARGV[5]), tonumber(ARGV[6]), tonumber(ARGV[8])
local bad = ''
local row = redis.pcall('HMGET', KEYS[1], 'c', 'n', 'nw', 'fw')
if row.err then
  -- Not a hash: not something hotcache wrote. Replaced by a SET first, which a full Redis refuses (OOM) before
  -- the script has written anything, then deleted: a DEL first would let the script run whole on a full Redis
  -- (memory is checked at a script's first write, and a DEL never needs memory), storing a code there that
  -- mfa_verify.lua, refused at its HSET, could not consume; refused whole, the issue goes to MongoDB instead.
  redis.call('SET', KEYS[1], '')
  redis.call('DEL', KEYS[1])
  row, bad = {}, 'sends'
end
local function num(i)
  local v = row[i]
  if not v then return nil end
  if string.match(v, '^%d+$') and #v < 16 then return tonumber(v) end
  bad = 'sends'
  return nil
end
local c, n, nw, fw = num(1), num(2), num(3), num(4)
if c and c > now then
  if c > now + cool then
    -- Longer than any cooldown this script sets (a lowered setting, or a write from outside): cut it back.
    c = now + cool
    redis.call('HSET', KEYS[1], 'c', c)
  end
  if c > now then return {0, c - now, 'cooldown', bad} end
end
if not nw or nw <= now then
  n, nw = 0, now + hour  -- a fixed window from the first send of the hour
elseif nw > now + hour then
  nw = now + hour
  redis.call('HSET', KEYS[1], 'nw', nw)
end
n = n or 0
if n >= cap then
  return {0, nw - now, 'hourly_cap', bad}
end
-- The whole record is replaced: the new code inherits no attempts and no used/burned state. f and fw stay.
redis.call('HSET', KEYS[1], 'd', ARGV[1], 'a', 0, 'iat', now, 'st', 'live', 's', ARGV[7],
  'c', now + cool, 'n', n + 1, 'nw', nw)
-- The key outlives every window in it: the code and a failure window opened at its last moment, the send
-- window, the cooldown, a failure window already open.
local keep = math.max(ttl + window, nw - now, cool, 1)
if fw and fw > now and fw - now <= window then keep = math.max(keep, fw - now) end
redis.call('PEXPIRE', KEYS[1], keep)
return {1, 0, '', bad}
