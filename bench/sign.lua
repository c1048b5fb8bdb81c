-- wrk script for bench/run: POST /webhooks deliveries signed like Pitchpoint's.
--
-- The body and its signature are computed once by bench/run (openssl dgst -sha256 -hmac, cross-checked with
-- `pps-sidecar sign`) and handed over in the environment:
--   BENCH_BODY_FILE  the body (its exact bytes are sent)
--   BENCH_SIG        lowercase hex HMAC-SHA256(secret, body)
--   BENCH_MODE       unique: a new X-Pps-Webhook-Id on every request (a delivery the app must process)
--                    dup:    the same X-Pps-Webhook-Id on every request (after the first: cache hits)
--                    fill:   unique until BENCH_QUOTA ids were issued in total, then repeats its last id
--                    static: the same bytes every time, sent by wrk's own fast path (no Lua per request);
--                            for the rows that do not reach the sidecar (nginx does not look at the id)
--   BENCH_PREFIX     8 hex digits, different for every wrk run, so that ids never repeat across runs
--   BENCH_THREADS    wrk's -t (to split BENCH_QUOTA between threads)
--   BENCH_QUOTA      fill mode only: ids to issue in total
--
-- Webhook ids are UUID-shaped, as Pitchpoint's are: PREFIX-TTTT-4000-8000-CCCCCCCCCCCC with TTTT the wrk
-- thread and C a per-thread counter. The request is built once with wrk.format (so Host and Content-Length
-- are wrk's own) around a placeholder, and each request only splices the counter in. Still, that is one
-- copy of the body per request in Lua: with 1 MiB bodies it costs wrk about a millisecond, hence the static
-- mode for the rows that do not need distinct ids.
--
-- done() prints one machine-readable line, BENCH_RESULT ..., that bench/run parses.

local next_tid = 0

function setup(thread)
  thread:set("tid", next_tid)
  next_tid = next_tid + 1
end

local pre, post
local counter = 0
local limit = nil   -- fill mode: this thread's share of BENCH_QUOTA
local mode

local function need(name)
  local v = os.getenv(name)
  if v == nil or v == "" then
    error("bench/sign.lua: environment variable " .. name .. " is not set")
  end
  return v
end

function init(args)
  mode = need("BENCH_MODE")
  local f = assert(io.open(need("BENCH_BODY_FILE"), "rb"))
  local body = f:read("*a")
  f:close()
  local headers = {
    ["Content-Type"] = "application/json",
    ["X-Pps-Topic"] = "orders/placed",
    ["X-Pps-Sub-Topic"] = "product:adv/adv-120",
    ["X-Pps-Tenant-Id"] = "OU1243",
    ["X-Pps-Triggered-At"] = "2024-01-1T10:00:00.7777748Z",
    ["X-Pps-Hmac-Sha256"] = need("BENCH_SIG"),
  }
  local t = (mode == "dup" or mode == "static") and 0 or tid
  local id_prefix = string.format("%s-%04x-4000-8000-", need("BENCH_PREFIX"), t)
  if mode == "static" then
    -- No global request(): wrk.init builds wrk.request from these fields (wrk.format()) after this init,
    -- and sends those same bytes on every request without calling into Lua.
    wrk.method = "POST"
    wrk.path = "/webhooks"
    wrk.body = body
    for k, v in pairs(headers) do wrk.headers[k] = v end
    wrk.headers["X-Pps-Webhook-Id"] = id_prefix .. string.format("%012x", 0)
    return
  end
  local placeholder = "@@WEBHOOK_ID@@"
  headers["X-Pps-Webhook-Id"] = placeholder
  local req = wrk.format("POST", "/webhooks", headers, body)
  local s, e = req:find(placeholder, 1, true)
  pre = req:sub(1, s - 1) .. id_prefix
  post = req:sub(e + 1)
  if mode == "fill" then
    local threads = tonumber(need("BENCH_THREADS"))
    limit = math.ceil(tonumber(need("BENCH_QUOTA")) / threads)
  elseif mode ~= "unique" and mode ~= "dup" then
    error("bench/sign.lua: BENCH_MODE must be unique, dup, fill or static, not " .. mode)
  end
end

-- Defined only when needed: its mere presence makes wrk call into Lua for every request.
local function dynamic_request()
  local id = counter
  if mode == "unique" then
    counter = counter + 1
  elseif mode == "fill" then
    if counter < limit then
      counter = counter + 1
      id = counter
    end
  end
  return pre .. string.format("%012x", id) .. post
end
if os.getenv("BENCH_MODE") ~= "static" then
  request = dynamic_request
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    "BENCH_RESULT requests=%d duration_us=%d bytes=%d connect=%d read=%d write=%d timeout=%d non2xx=%d "
      .. "p50_us=%d p90_us=%d p99_us=%d max_us=%d mean_us=%.1f\n",
    summary.requests, summary.duration, summary.bytes, e.connect, e.read, e.write, e.timeout, e.status,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max, latency.mean))
end
