-- Helpers prepended to every script of this folder (store/scripts.py does the joining).
-- Hashes are read with HGETALL into a table; events are XADDed with one JSON document per
-- entity so that the write-behind consumer reads typed values.

local NUMERIC = {
  version = true, rev = true, total_amount = true, amount = true, cart_version = true,
  created_at = true, updated_at = true, expires_at = true, refund_required = true,
}
local RAW_JSON = { items = true }

-- A hash as a table, or nil. In RESP3 Redis hands HGETALL's map over as a table it built
-- itself: about 4 µs less per 16-field hash than building it in Lua from RESP2's flat array
-- (decision 36). Only this call switches: the scripts read every other reply as RESP2.
local function hload(key)
  redis.setresp(3)
  local t = redis.call('HGETALL', key).map
  redis.setresp(2)
  if next(t) == nil then return nil end
  return t
end

local function flatten(t)
  local flat = {}
  for k, v in pairs(t) do
    flat[#flat + 1] = k
    flat[#flat + 1] = tostring(v)
  end
  return flat
end

local function save(key, t)
  redis.call('HSET', key, unpack(flatten(t)))
end

-- One cjson.encode per entity, the items (already JSON text) spliced in as they are:
-- encoding field by field, or decoding and encoding the items again, cost Redis tens of
-- microseconds per state change (decision 25).
local function to_json(t)
  local doc, items = {}, nil
  for k, v in pairs(t) do
    if NUMERIC[k] then
      doc[k] = tonumber(v)
    elseif RAW_JSON[k] then
      items = v
    else
      doc[k] = v -- a string already: every other field comes from a hash, ARGV or a literal
    end
  end
  local text = cjson.encode(doc)
  if items == nil then return text end
  if text == '{}' then return '{"items":' .. items .. '}' end
  return '{"items":' .. items .. ',' .. string.sub(text, 2)
end

-- HSET only the named fields of t (the ones a step changed).
local function save_fields(key, t, names)
  local args = {}
  for _, name in ipairs(names) do
    args[#args + 1] = name
    args[#args + 1] = tostring(t[name])
  end
  redis.call('HSET', key, unpack(args))
end

-- The fields of a payment the gateway reads back from a settlement.
local function brief(payment)
  return {
    'txnid', payment.txnid, 'cart_id', payment.cart_id, 'status', payment.status,
    'booking_id', payment.booking_id or '', 'refund_required', tostring(payment.refund_required),
    'reason', payment.reason or '',
  }
end

-- ACTIVE/CHECKOUT carts past expires_at are EXPIRED, whatever the stored field says.
local function effective_status(cart, now)
  local s = cart.status
  if (s == 'ACTIVE' or s == 'CHECKOUT') and tonumber(cart.expires_at) <= now then
    return 'EXPIRED'
  end
  return s
end

-- XADD stream * type <t> at <now> [name json]...
local function emit(stream, event_type, now, entities)
  local args = { 'XADD', stream, '*', 'type', event_type, 'at', tostring(now) }
  for _, pair in ipairs(entities) do
    args[#args + 1] = pair[1]
    args[#args + 1] = to_json(pair[2])
  end
  return redis.call(unpack(args))
end
