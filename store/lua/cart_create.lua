-- Create a cart.
-- KEYS[1] cart hash, KEYS[2] partition event stream
-- ARGV[1] cart_id, ARGV[2] user_id, ARGV[3] currency, ARGV[4] now (ms),
-- ARGV[5] cart TTL (ms), ARGV[6] how long an expired cart is kept to answer EXPIRED (ms)
-- Returns {'ok', flat cart} or {'exists'}; emits cart.created.
local cart_key, stream = KEYS[1], KEYS[2]
local now, ttl, keep = tonumber(ARGV[4]), tonumber(ARGV[5]), tonumber(ARGV[6])
if redis.call('EXISTS', cart_key) == 1 then return { 'exists' } end
local cart = {
  cart_id = ARGV[1], user_id = ARGV[2], currency = ARGV[3], status = 'ACTIVE',
  items = '[]', total_amount = 0, version = 1, rev = 1, txnid = '',
  created_at = now, updated_at = now, expires_at = now + ttl,
}
save(cart_key, cart)
redis.call('PEXPIREAT', cart_key, now + ttl + keep)
emit(stream, 'cart.created', now, { { 'cart', cart } })
return { 'ok', flatten(cart) }
