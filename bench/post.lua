-- POST the seed recipe's full order, rotating over 5,000 external_ids
-- (the first pass inserts, the rest update), and report JSON figures.
-- BENCH_PHONES=N (default 1: the seed's +33612345678 on every order) spreads the
-- orders over N customers' phones instead.
-- Each thread writes its requests once, as it starts (a cycle of 5,000, or the
-- least common multiple of 5,000 and N): the load generator shares the machine's
-- cores with the server it loads, so it does as little per request as it can
-- (wrk counts the non-2xx answers itself: no response callback).
local path = os.getenv("BENCH_PATH") or "/api/v1/stores/123/orders"
local key = os.getenv("BENCH_KEY") or ""
local phones = tonumber(os.getenv("BENCH_PHONES") or "1")
local prefix = '{"external_id": "ORDER-'
local middle = [[", "placed_at": "2026-05-18T10:00:00Z", "total_price": 49.90, "currency": "EUR",
"financial_status": "pending", "fulfillment_status": "unfulfilled",
"customer": {"external_id": "CUST-42", "phone": "]]
local suffix = [[", "first_name": "Marie",
"last_name": "Durand", "email": "marie.durand@example.com", "locale": "fr", "tags": ["vip"],
"lifetime_value": 1299, "orders_count": 7},
"line_items": [{"title": "T-shirt Bordeaux", "quantity": 2, "price": 24.95}],
"tags": ["web"], "metadata": {"source": "custom-checkout"}}]]

local function phone(n)
  if phones <= 1 then return "+33612345678" end
  return string.format("+336%08d", 12345678 + (n % phones))
end
local headers = {["Content-Type"] = "application/json", ["Authorization"] = "Bearer " .. key}

local function gcd(a, b)
  while b ~= 0 do a, b = b, a % b end
  return a
end
-- make(n) depends on n mod 5000 and n mod phones alone, so request n is written[n mod cycle].
local cycle = 5000
if phones > 1 then cycle = 5000 / gcd(5000, phones) * phones end
local written = {}
local counter = 0

local function make(n)
  return wrk.format("POST", path, headers, prefix .. (n % 5000) .. middle .. phone(n) .. suffix)
end

init = function(args)
  if cycle <= 100000 then
    for n = 0, cycle - 1 do written[n] = make(n) end
  end
end

request = function()
  counter = counter + 1
  return written[counter % cycle] or make(counter)
end

done = function(summary, latency, requests)
  io.write(string.format(
    'JSON {"requests": %d, "seconds": %.3f, "rps": %.1f, "p50_ms": %.2f, "p99_ms": %.2f, ' ..
    '"non2xx": %d, "socket_errors": %d}\n',
    summary.requests, summary.duration / 1e6, summary.requests / (summary.duration / 1e6),
    latency:percentile(50) / 1000, latency:percentile(99) / 1000,
    summary.errors.status, summary.errors.connect + summary.errors.read + summary.errors.write
      + summary.errors.timeout))
end
