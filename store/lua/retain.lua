-- Give records PostgreSQL now holds their retention TTL, many at once (one call per
-- partition and batch instead of one EXPIRE per key).
-- KEYS[i] a cart, payment or booking hash of one partition
-- ARGV[i] its TTL in seconds
-- Returns the number of keys that existed.
local n = 0
for i, key in ipairs(KEYS) do
  n = n + redis.call('EXPIRE', key, ARGV[i])
end
return n
