-- make bench: every benchmark, one table, with the references measured in
-- the same run. Usage: lua5.4 bench/run.lua
local cjson = require "cjson"
local data = require "bench.data"

local sh = data.sh

local function median(t)
  table.sort(t)
  return t[(#t + 1) // 2]
end

local paths = data.make()
local rows = {}
local function row(what, value, reference, target, ok)
  rows[#rows + 1] = { what, value, reference or "", target or "", ok == nil and "" or (ok and "met" or "MISSED") }
end

-- ---- upload: one edit, five 9.5 MB PNGs and a mask, to a sink that answers at once ----
local sink_log = data.dir .. "/sink.txt"
local pid = sh("lua5.4 bin/imgedit emulate --sink > " .. sink_log .. " 2>&1 & echo $!"):match("%d+")
local url, key
for _ = 1, 100 do
  local s = sh("cat " .. sink_log)
  url, key = s:match("url (%S+)"), s:match("key (%S+)")
  if url then break end
  sh("sleep 0.05")
end
assert(url, "the sink did not start")
local files = table.concat(paths.images, " ") .. " " .. paths.mask

-- CPU is read for a loop of runs as a whole (the kernel's accounting is
-- coarse for one short process); peak RSS is the largest single run's.
local function measure(cmd, runs)
  local out = sh(string.format("/usr/bin/time -f 'TIME %%e %%U %%S %%M' sh -c 'for i in $(seq %d); do %s >/dev/null || exit 1; done' 2>&1",
    runs, cmd:gsub("'", "'\\''")))
  local e, u, s2, m = out:match("TIME ([%d.]+) ([%d.]+) ([%d.]+) (%d+)")
  if not e then return nil, out end
  return { cpu = (tonumber(u) + tonumber(s2)) / runs, rss = tonumber(m) / 1024, wall = tonumber(e) / runs }
end

local curl_parts = {}
for _, p in ipairs(paths.images) do curl_parts[#curl_parts + 1] = "-F 'image[]=@" .. p .. ";type=image/png'" end
local curl_cmd = string.format("curl -sS -o /dev/null -H 'Authorization: Bearer %s' -F model=gpt-image-2 "
  .. "-F 'prompt=Fuse the five images' %s -F 'mask=@%s;type=image/png' %s/images/edits", key,
  table.concat(curl_parts, " "), paths.mask, url)
local runs = 20
-- interleaved rounds, so that a noisy moment hits both alike
local mine, curl = { cpu = 0, rss = 0, wall = 0 }, { cpu = 0, rss = 0, wall = 0 }
for _ = 1, 3 do
  local a = assert(measure(string.format("lua5.4 bench/upload.lua %s %s %s", url, key, files), runs))
  local b = assert(measure(curl_cmd, runs))
  for k in pairs(mine) do mine[k], curl[k] = mine[k] + a[k] / 3, curl[k] + b[k] / 3 end
end
local have_sdk = os.execute("test -d bench/node_modules/openai")
local sdk = (have_sdk == true or have_sdk == 0) and measure(string.format("node bench/upload.mjs %s %s %s", url, key, files), 3) or nil
os.execute("kill " .. pid)
local total = 0
for _, p in ipairs(paths.images) do total = total + tonumber(sh("stat -c %s " .. p)) end
total = total + tonumber(sh("stat -c %s " .. paths.mask))
row(string.format("upload %.1f MB: client CPU s", total / 1048576), string.format("%.4f", mine.cpu),
  string.format("curl %.4f%s", curl.cpu, sdk and string.format(", sdk %.3f", sdk.cpu) or ""),
  "<= 1.15x curl", mine.cpu <= 1.15 * curl.cpu)
row("upload: peak RSS MB", string.format("%.1f", mine.rss),
  string.format("curl %.1f%s", curl.rss, sdk and string.format(", sdk %.1f", sdk.rss) or ""),
  "<= 1.2x curl, <= 1/3 sdk", mine.rss <= 1.2 * curl.rss and (not sdk or mine.rss <= sdk.rss / 3))
row("upload: wall s", string.format("%.3f", mine.wall),
  string.format("curl %.3f%s", curl.wall, sdk and string.format(", sdk %.3f", sdk.wall) or ""))

-- ---- answer decode ----
-- Large blocks straight from mmap, so that freed memory leaves the process
-- and the peak measured is the true extra memory of one decode.
local d = cjson.decode(sh("MALLOC_MMAP_THRESHOLD_=131072 lua5.4 bench/decode.lua " .. paths.answer))
local mb = d.png_bytes / 1048576
for _, k in ipairs { "raw", "dataurl" } do
  local r = d[k]
  row(string.format("decode %.1f MB PNG answer (%s): ms", mb, k == "raw" and "raw base64" or "data URL"),
    string.format("%.1f", r.ms), "", "< 20 ms", r.ms < 20)
  row(string.format("decode (%s): extra memory", k), string.format("%.2fx image", r.extra / d.png_bytes), "",
    "<= 3x image", r.extra <= 3 * d.png_bytes)
end

-- ---- pipeline re-run ----
-- ---- preserve: the pixel work of an edit with a mask ----
-- Against the codec floor of the same run: decoding the answer and image 1
-- and encoding the result, which any composite must pay.
local pv = cjson.decode(sh("lua5.4 bench/preserve.lua " .. paths.answer))
for _, fmt in ipairs { "png", "jpeg", "webp" } do
  local r = pv[fmt]
  local floor = r.decode_answer + r.decode_base + r.encode
  row(string.format("preserve, %dx%d %s answer: ms", pv.width, pv.height, fmt), string.format("%.1f", r.preserve),
    string.format("codec floor %.1f (%.2fx)", floor, r.preserve / floor), "< 60 ms", r.preserve < 60)
  row(string.format("mask_drift alone (%s): ms", fmt), string.format("%.1f", r.figures),
    string.format("decodes %.1f (%.2fx)", r.decode_answer + r.decode_base + r.decode_mask,
      r.figures / (r.decode_answer + r.decode_base + r.decode_mask)))
end

local rr = cjson.decode(sh("lua5.4 bench/rerun.lua"))
row("pipeline of 5 steps, first run: s", string.format("%.2f", rr.first), string.format("%d requests", rr.first_requests))
row("pipeline re-run: s", string.format("%.3f", rr.second), string.format("%d requests (emulator saw %d)", rr.second_requests, rr.emulator_saw),
  "0 requests", rr.second_requests == 0 and rr.emulator_saw == 0)

-- ---- the guard against libcurl's silent re-send ----
local g = cjson.decode(sh("lua5.4 bench/guard.lua"))
row(string.format("%d sequential generations, re-send guard on: client CPU s", g.n), string.format("%.3f", g.cpu_on),
  string.format("guard off %.3f", g.cpu_off), "<= 1.05x off", g.cpu_on <= 1.05 * g.cpu_off)
row("50 sequential generations: connections opened", tostring(g.conns_on), string.format("guard off %d", g.conns_off),
  "the same", g.conns_on == g.conns_off)

-- ---- a frame loop's poll ----
local pl = cjson.decode(sh("lua5.4 bench/poll.lua"))
row(string.format("poll(0) with %d transfers in flight: calls into imgedit.core", pl.n), string.format("%.0f", pl.core_calls),
  string.format("median %.0f us a poll", pl.median_us), "not one per transfer", pl.core_calls <= 2)

-- ---- a frame's share: the network and decoding off the caller's thread ----
local fr = cjson.decode(sh("lua5.4 bench/frame.lua"))
row(string.format("poll(0) with %d uploads of %.1f MB in flight: longest call, main thread CPU / wall", fr.uploads,
  fr.upload_bytes / 1e6), string.format("%.2f / %.2f ms (median wall %.2f; %d polls)", fr.cpu_max_ms, fr.poll_max_ms,
  fr.poll_median_ms, fr.polls),
  string.format("nothing in flight: %.2f ms wall; before issue 19: 102-123 ms, median 13-24", fr.floor_max_ms),
  "< 2 ms", fr.cpu_max_ms < 2)
row("the same, an on_progress callback on every job", string.format("%.2f / %.2f ms (median wall %.2f)",
  fr.progress_cpu_max_ms, fr.progress_max_ms, fr.progress_median_ms), "before issue 19: 148-260 ms", "", nil)
row(string.format("1024x1024 PNG answer (%.1f MB): last byte to pixels in Lua", fr.png_bytes / 1e6),
  string.format("%.1f ms", fr.after.ready_ms), string.format("decoded on the caller's thread: %.1f ms", fr.before.ready_ms),
  "", nil)
row("the same: the main thread's share of it", string.format("%.1f ms (longest poll %.1f)", fr.after.main_ms, fr.after.longest_ms),
  string.format("decoded on the caller's thread: %.1f ms (one decode: %.1f)", fr.before.main_ms, fr.decode_ms),
  "no decode on it: < 1/4", fr.after.main_ms < 0.25 * fr.before.main_ms)

-- ---- handing pictures over: a buffer, not a string; the composite on a decoder ----
local ho = cjson.decode(sh("lua5.4 bench/handover.lua " .. paths.answer))
for _, size in ipairs { "1536x1024", "2048x2048" } do
  local r = ho[size]
  row(string.format("poll(0) that takes a %s picture in: main thread CPU", size), string.format("%.2f ms", r.buffer_ms),
    string.format("as a string (img.pixels): %.2f ms (%.2fx)", r.string_ms, r.string_ms / r.buffer_ms),
    size == "1536x1024" and "< 2 ms" or "", size == "1536x1024" and r.buffer_ms < 2 or nil)
end
row("preserve = true, 1536x1024: main thread CPU for the composite", string.format("%.2f ms", ho.preserve.after_ms),
  string.format("made on the caller's thread: %.1f ms", ho.preserve.before_ms), "< 1/10",
  ho.preserve.after_ms < ho.preserve.before_ms / 10)

-- ---- the scheduler with many jobs waiting ----
local sc = cjson.decode(sh("lua5.4 bench/schedule.lua"))
row(string.format("submit %d jobs (64 slots)", sc.large.n), string.format("%.2f s", sc.large.submit_s),
  string.format("%d jobs: %.2f s", sc.small.n, sc.small.submit_s), "grows with n, not n^2",
  sc.large.submit_s <= 8 * 1.5 * sc.small.submit_s + 0.05)
row(string.format("poll(0) with %d jobs queued", sc.large.n), string.format("%.3f ms", sc.large.poll_median_ms),
  string.format("%d queued: %.3f ms", sc.small.n, sc.small.poll_median_ms), "independent of the queue",
  sc.large.poll_median_ms <= 2 * sc.small.poll_median_ms + 0.05)

-- ---- a batch of 2,000 jobs against a rate limit ----
local bt = cjson.decode(sh("lua5.4 bench/batch.lua run 2000 100"))
row(string.format("batch of %d edits, limit %d req/s: wall s", bt.n, bt.limit), string.format("%.1f", bt.wall),
  string.format("the limit allows %.1f", bt.ideal), "<= 1.25x the limit's", bt.wall <= 1.25 * bt.ideal)
row("the same batch: 429 answers", string.format("%d of %d requests", bt.refused, bt.requests), "", "< 5 %",
  bt.refused < 0.05 * bt.requests)
row("the same batch: RSS MB after 200 / 2,000 jobs", string.format("%.1f / %.1f", bt.rss200, bt.rss_n), "",
  "within 20 %", bt.rss_n <= 1.2 * bt.rss200)

-- ---- the batch journal on the disk before each request ----
local jn = cjson.decode(sh("lua5.4 bench/journal.lua"))
row(string.format("batch journal: %d lines, each fdatasync'ed", jn.n), string.format("%.3f s (%.2f ms a job)", jn.synced_s,
  jn.synced_s / jn.n * 1000), string.format("flushed only: %.3f s", jn.flushed_s), "", nil)

-- ---- connections and TLS handshakes through a real TLS front ----
local nw = cjson.decode(sh("lua5.4 bench/network.lua"))
if nw.h1 then
  local function hs(r) return string.format("%d conn, %d full + %d resumed", r.connections, r.full, r.resumed) end
  for _, mode in ipairs { "sequential", "parallel" } do
    row(string.format("%d edits over TLS, %s: HTTP/2", nw.edits, mode == "parallel" and "submitted at once" or "one by one"),
      hs(nw.h2[mode]), "HTTP/1.1: " .. hs(nw.h1[mode]), "h2: 1 connection", nw.h2[mode].connections == 1)
  end
else
  row("edits over TLS (nghttpx)", "n/a", "nghttp2-proxy or openssl missing")
end

-- ---- the table ----
local w = { 0, 0, 0, 0, 0 }
local head = { "benchmark", "imgedit", "reference (same run)", "target", "" }
for _, r in ipairs { head, table.unpack(rows) } do
  for i = 1, 5 do w[i] = math.max(w[i], #r[i]) end
end
local function line(r)
  local parts = {}
  for i = 1, 5 do parts[i] = r[i] .. string.rep(" ", w[i] - #r[i]) end
  print("| " .. table.concat(parts, " | ") .. " |")
end
line(head)
local sep = {}
for i = 1, 5 do sep[i] = string.rep("-", w[i]) end
line(sep)
for _, r in ipairs(rows) do line(r) end
print()
-- ---- fan-out, its own table ----
io.write(sh("lua5.4 bench/fanout.lua"))
