-- Start a payment attempt on a cart: payment INITIATED, cart CHECKOUT (items frozen), and
-- the cart's life extended to the payment window.
-- KEYS[1] cart hash, KEYS[2] payment hash, KEYS[3] partition event stream
-- ARGV[1] txnid, ARGV[2] provider, ARGV[3] cart version the amount was computed for,
-- ARGV[4] amount (minor units), ARGV[5] now (ms), ARGV[6] payment window (ms),
-- ARGV[7] keep (ms), ARGV[8] provider's order reference ('' when none)
-- Returns {'ok', flat payment} | {'notfound'} | {'conflict', detail} | {'stale'} | {'exists'};
-- emits payment.initiated.
local cart_key, pay_key, stream = KEYS[1], KEYS[2], KEYS[3]
local now, window, keep = tonumber(ARGV[5]), tonumber(ARGV[6]), tonumber(ARGV[7])
local cart = hload(cart_key)
if not cart then return { 'notfound' } end
local status = effective_status(cart, now)
if status ~= 'ACTIVE' and status ~= 'CHECKOUT' then
  return { 'conflict', 'the cart is ' .. status .. ': no payment can be started' }
end
if cart.version ~= ARGV[3] or cart.total_amount ~= ARGV[4] then return { 'stale' } end
if cart.items == '[]' then return { 'conflict', 'the cart is empty' } end
if redis.call('EXISTS', pay_key) == 1 then return { 'exists' } end
local payment = {
  txnid = ARGV[1], cart_id = cart.cart_id, user_id = cart.user_id, provider = ARGV[2],
  amount = ARGV[4], currency = cart.currency, status = 'INITIATED', cart_version = cart.version,
  provider_ref = ARGV[8], provider_payment_id = '', booking_id = '', refund_required = 0,
  reason = '', rev = 1, created_at = now, updated_at = now,
}
save(pay_key, payment)
cart.status = 'CHECKOUT'
cart.txnid = ARGV[1]
cart.rev = tonumber(cart.rev) + 1
cart.updated_at = now
if tonumber(cart.expires_at) < now + window then cart.expires_at = now + window end
save(cart_key, cart)
redis.call('PEXPIREAT', cart_key, tonumber(cart.expires_at) + keep)
emit(stream, 'payment.initiated', now, { { 'payment', payment }, { 'cart', cart } })
return { 'ok', flatten(payment) }
