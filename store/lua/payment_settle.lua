-- Apply a verified provider notice to a payment, atomically with its cart and booking.
--   success, cart unchanged since the payment started and not final:
--     payment SUCCESS, booking CONFIRMED (one per cart: its key is the cart's), cart CONVERTED
--   success otherwise (cart converted by another payment, expired, or changed since):
--     payment SUCCESS with refund_required = 1, no booking
--   failure of an INITIATED payment: payment FAILED; the cart goes back to ACTIVE when this
--     was its latest attempt
--   a payment already SUCCESS, or a failure already FAILED: nothing changes (a replay)
-- KEYS[1] cart hash, KEYS[2] payment hash, KEYS[3] booking hash, KEYS[4] event stream
-- ARGV[1] 'success' | 'failure', ARGV[2] provider, ARGV[3] amount claimed ('' = not carried),
-- ARGV[4] currency claimed ('' = not carried), ARGV[5] provider order ref the signature
-- covers ('' = none), ARGV[6] provider payment id, ARGV[7] failure reason, ARGV[8] now (ms),
-- ARGV[9] booking id
-- Returns {'notfound'} | {'mismatch', field} | {'done', flat brief payment (txnid, cart_id,
-- status, booking_id, refund_required, reason), applied '1' | '0'};
-- emits payment.succeeded, payment.refund_required or payment.failed.
local cart_key, pay_key, booking_key, stream = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local outcome, now = ARGV[1], tonumber(ARGV[8])
local payment = hload(pay_key)
if not payment then return { 'notfound' } end
if payment.provider ~= ARGV[2] then return { 'mismatch', 'provider' } end
if ARGV[5] ~= '' and payment.provider_ref ~= ARGV[5] then return { 'mismatch', 'order' } end
if ARGV[3] ~= '' and payment.amount ~= ARGV[3] then return { 'mismatch', 'amount' } end
if ARGV[4] ~= '' and payment.currency ~= ARGV[4] then return { 'mismatch', 'currency' } end

if payment.status == 'SUCCESS' or (outcome == 'failure' and payment.status == 'FAILED') then
  return { 'done', brief(payment), '0' }
end

payment.rev = tonumber(payment.rev) + 1
payment.updated_at = now
local cart = hload(cart_key)

if outcome == 'failure' then
  payment.status = 'FAILED'
  payment.reason = ARGV[7]
  save_fields(pay_key, payment, { 'status', 'reason', 'rev', 'updated_at' })
  local entities = { { 'payment', payment } }
  if cart and cart.txnid == payment.txnid and effective_status(cart, now) == 'CHECKOUT' then
    cart.status = 'ACTIVE'
    cart.rev = tonumber(cart.rev) + 1
    cart.updated_at = now
    save_fields(cart_key, cart, { 'status', 'rev', 'updated_at' })
    entities[2] = { 'cart', cart }
  end
  emit(stream, 'payment.failed', now, entities)
  return { 'done', brief(payment), '1' }
end

-- what a success changes in the payment (booking_id stays '' when it makes no booking)
local PAID_FIELDS = {
  'status', 'provider_payment_id', 'reason', 'refund_required', 'booking_id', 'rev', 'updated_at',
}
payment.status = 'SUCCESS'
payment.provider_payment_id = ARGV[6]
payment.reason = ''
local why = nil
if not cart then
  why = 'cart_gone'
else
  local status = effective_status(cart, now)
  if status == 'CONVERTED' then
    why = 'cart_converted'
  elseif status == 'EXPIRED' then
    why = 'cart_expired'
  elseif cart.version ~= payment.cart_version then
    why = 'cart_changed'
  elseif redis.call('EXISTS', booking_key) == 1 then
    why = 'cart_converted'
  end
end

if why then
  payment.refund_required = 1
  payment.reason = why
  save_fields(pay_key, payment, PAID_FIELDS)
  emit(stream, 'payment.refund_required', now, { { 'payment', payment } })
  return { 'done', brief(payment), '1' }
end

local booking = {
  booking_id = ARGV[9], cart_id = cart.cart_id, txnid = payment.txnid, user_id = cart.user_id,
  status = 'CONFIRMED', items = cart.items, amount = payment.amount, currency = payment.currency,
  created_at = now,
}
save(booking_key, booking)
payment.booking_id = ARGV[9]
save_fields(pay_key, payment, PAID_FIELDS)
cart.status = 'CONVERTED'
cart.txnid = payment.txnid
cart.rev = tonumber(cart.rev) + 1
cart.updated_at = now
save_fields(cart_key, cart, { 'status', 'txnid', 'rev', 'updated_at' })
redis.call('PERSIST', cart_key)
emit(stream, 'payment.succeeded', now,
  { { 'payment', payment }, { 'booking', booking }, { 'cart', cart } })
return { 'done', brief(payment), '1' }
