-- Give records PostgreSQL now holds their retention TTL, many at once (one call per
-- partition and batch instead of one EXPIRE per key).
-- KEYS[1] .. KEYS[n] carts, payments or bookings of one partition (KEYS[i] gets ARGV[i])
-- ARGV[1] .. ARGV[n] their TTLs in seconds
-- Returns the number of keys that existed.
local n = 0
for i, key in ipairs(KEYS) do
  n = n + redis.call('EXPIRE', key, ARGV[i])
end
return n
