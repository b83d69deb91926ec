-- Add an item to, or remove one from, an ACTIVE cart.
-- KEYS[1] cart hash, KEYS[2] partition event stream
-- ARGV[1] 'add' | 'remove', ARGV[2] now (ms), ARGV[3] cart TTL (ms), ARGV[4] keep (ms),
-- ARGV[5] service_id, ARGV[6] name, ARGV[7] unit_amount, ARGV[8] quantity,
-- ARGV[9] max distinct items, ARGV[10] max quantity of one item, ARGV[11] max total amount
-- Returns {'ok', flat cart} | {'notfound'} | {'conflict', detail} | {'noitem'} |
-- {'limit', detail}; emits cart.updated.
local cart_key, stream = KEYS[1], KEYS[2]
local op, now, ttl, keep = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local service_id = ARGV[5]
local cart = hload(cart_key)
if not cart then return { 'notfound' } end
local status = effective_status(cart, now)
if status ~= 'ACTIVE' then
  return { 'conflict', 'the cart is ' .. status .. ': its items cannot change' }
end
local items = cjson.decode(cart.items)
local found = nil
for i, item in ipairs(items) do
  if item.service_id == service_id then found = i end
end
if op == 'add' then
  local unit, qty = tonumber(ARGV[7]), tonumber(ARGV[8])
  if found then
    local item = items[found]
    if item.unit_amount ~= unit then
      return { 'conflict', 'service ' .. service_id .. ' is already in the cart at another unit_amount' }
    end
    item.quantity = item.quantity + qty
    item.name = ARGV[6]
    if item.quantity > tonumber(ARGV[10]) then
      return { 'limit', 'quantity of one service may not exceed ' .. ARGV[10] }
    end
  else
    if #items >= tonumber(ARGV[9]) then
      return { 'limit', 'a cart holds at most ' .. ARGV[9] .. ' services' }
    end
    items[#items + 1] = { service_id = service_id, name = ARGV[6], unit_amount = unit, quantity = qty }
  end
else
  if not found then return { 'noitem' } end
  table.remove(items, found)
end
local total = 0
for _, item in ipairs(items) do total = total + item.unit_amount * item.quantity end
if total > tonumber(ARGV[11]) then
  return { 'limit', 'the cart total may not exceed ' .. ARGV[11] }
end
if #items == 0 then cart.items = '[]' else cart.items = cjson.encode(items) end
cart.total_amount = total
cart.version = tonumber(cart.version) + 1
cart.rev = tonumber(cart.rev) + 1
cart.updated_at = now
cart.expires_at = now + ttl
save(cart_key, cart)
redis.call('PEXPIREAT', cart_key, now + ttl + keep)
emit(stream, 'cart.updated', now, { { 'cart', cart } })
return { 'ok', flatten(cart) }
