-- Shared test helpers: a temporary folder, image fixtures made on the spot
-- (no binary files in the repo), and an emulator per spec file.
local core = require "imgedit.core"

local H = {}

-- The interpreter and build the suite runs with (make test-all sets them),
-- for the child processes the tests start.
-- By default, this interpreter's: its build folder is build/lua5.4, build/luajit ...
local this = rawget(_G, "jit") and "luajit" or "lua" .. _VERSION:match("%d+%.%d+")
H.LUA = os.getenv("IMGEDIT_TEST_LUA") or this
H.BUILD = os.getenv("IMGEDIT_TEST_BUILD") or "build/" .. this
H.LUAV = os.getenv("IMGEDIT_TEST_LUAV") or _VERSION:match("%d+%.%d+")

-- The environment of a child `lua bin/imgedit`: this checkout and the
-- suite's build (never the sanitizer build, whose runtime a child lacks).
H.CHILD = "env LUA_PATH='lua/?.lua;lua/?/init.lua;;' LUA_CPATH='" .. H.BUILD .. "/?.so;;' "

-- os.execute's result: true on success in 5.2+, 0 in 5.1.
function H.ok(cmd)
  local r = os.execute(cmd)
  return r == true or r == 0
end

-- Sanitizer and valgrind runs are slower: upper bounds on time scale by this.
H.SLOW = tonumber(os.getenv("IMGEDIT_TEST_SLOW")) or 1

-- Under `make test-asan` the sanitizer runtime is preloaded into this
-- interpreter; the programs the tests start (script, make, sh) are not ours
-- and must not inherit it.
-- Under ThreadSanitizer (make soak) even starting a child shell with its
-- runtime preloaded crashes it: this process forgets the preload (it is
-- loaded already) before it starts any.
if (os.getenv("LD_PRELOAD") or ""):find("tsan", 1, true) then
  require("imgedit_test.proc").unsetenv("LD_PRELOAD")
end
if os.getenv("LD_PRELOAD") then
  local popen, execute = io.popen, os.execute
  io.popen = function(cmd, ...) return popen("unset LD_PRELOAD; " .. cmd, ...) end
  os.execute = function(cmd, ...) return execute(cmd and ("unset LD_PRELOAD; " .. cmd), ...) end
end

-- sh(cmd) -> its output (stdout and stderr), its exit code.
function H.sh(cmd)
  local p = io.popen(cmd .. " 2>&1; echo \"exit=$?\"")
  local out = p:read("*a")
  p:close()
  return out:gsub("exit=%d+%s*$", ""), tonumber(out:match("exit=(%d+)%s*$"))
end

function H.tmpdir()
  local p = os.tmpname()
  os.remove(p)
  assert(H.ok("mkdir -p '" .. p .. "'"))
  return p
end

function H.rmtree(p)
  if p and p:match("^/tmp/") then os.execute("rm -rf '" .. p .. "'") end
end

function H.write(path, bytes)
  local f = assert(io.open(path, "wb"))
  f:write(bytes)
  f:close()
  return path
end

function H.read(path)
  local f = assert(io.open(path, "rb"))
  local s = f:read("*a")
  f:close()
  return s
end

function H.exists(path)
  local f = io.open(path, "rb")
  if f then f:close() end
  return f ~= nil
end

-- lines(cmd) -> the lines a command prints.
function H.lines(cmd)
  local out = {}
  local p = io.popen(cmd)
  for line in p:lines() do out[#out + 1] = line end
  p:close()
  return out
end

function H.ls(dir) return H.lines("ls -A '" .. dir .. "'") end

-- ---- RGBA pictures and encoders from the C core ----

-- A w x h RGBA picture: a gradient, with alpha from `alpha(x, y)` if given.
function H.rgba(w, h, alpha)
  local t = {}
  for y = 0, h - 1 do
    for x = 0, w - 1 do
      t[#t + 1] = string.char(math.floor(x * 255 / math.max(w - 1, 1)), math.floor(y * 255 / math.max(h - 1, 1)), 128,
        alpha and alpha(x, y) or 255)
    end
  end
  return table.concat(t)
end

function H.png(w, h, alpha) return core.encode(H.rgba(w, h, alpha), w, h, "png") end
function H.jpeg(w, h) return core.encode(H.rgba(w, h), w, h, "jpeg", 85) end

-- ---- a small PNG writer for the variants stb cannot write ----
-- (palette, tRNS, 16-bit, interlaced): stored deflate blocks, real CRCs.

-- Arithmetic only, so that this file runs on Lua 5.1 and LuaJIT as well as
-- 5.3 and 5.4: XOR a nibble at a time, packing by hand.
local XOR4 = {}
for a = 0, 15 do
  XOR4[a] = {}
  for b = 0, 15 do
    local r, p, x, y = 0, 1, a, b
    for _ = 1, 4 do
      if x % 2 ~= y % 2 then r = r + p end
      x, y, p = math.floor(x / 2), math.floor(y / 2), p * 2
    end
    XOR4[a][b] = r
  end
end

local function bxor(a, b)
  local r, p = 0, 1
  while a > 0 or b > 0 do
    r = r + XOR4[a % 16][b % 16] * p
    a, b, p = math.floor(a / 16), math.floor(b / 16), p * 16
  end
  return r
end
-- The native XOR where there is one (5.3+ operators, LuaJIT's bit, 5.2's
-- bit32): the CRC of a picture of megabytes takes a second instead of a
-- minute. LuaJIT's bit.bxor is signed: back to 0..2^32-1.
do
  local native = (loadstring or load)("return function(a, b) return a ~ b end")
  if native then
    bxor = native()
  elseif bit32 then
    bxor = bit32.bxor
  elseif bit then
    local bx = bit.bxor
    bxor = function(a, b) return bx(a, b) % 4294967296 end
  end
end

-- pack(fmt, ...): the subset of string.pack the fixtures need: "<" or ">",
-- then I1..I4 / i1..i4 (unsigned, signed) and B.
function H.pack(fmt, ...)
  local args, out, big, n = { ... }, {}, false, 0
  for c, size in fmt:gmatch("([<>IiB])(%d*)") do
    if c == "<" then
      big = false
    elseif c == ">" then
      big = true
    else
      n = n + 1
      local v, len = args[n], c == "B" and 1 or tonumber(size)
      if v < 0 then v = v + 2 ^ (8 * len) end
      local bytes = {}
      for i = 1, len do
        bytes[i] = string.char(v % 256)
        v = math.floor(v / 256)
      end
      if big then
        for i = 1, math.floor(len / 2) do bytes[i], bytes[len + 1 - i] = bytes[len + 1 - i], bytes[i] end
      end
      out[#out + 1] = table.concat(bytes)
    end
  end
  return table.concat(out)
end

local crc_table = {}
for i = 0, 255 do
  local c = i
  for _ = 1, 8 do
    if c % 2 == 1 then c = bxor(3988292384, math.floor(c / 2)) else c = math.floor(c / 2) end
  end
  crc_table[i] = c
end

local function crc32(s)
  local c = 4294967295
  for i = 1, #s do c = bxor(crc_table[bxor(c % 256, s:byte(i))], math.floor(c / 256)) end
  return bxor(c, 4294967295)
end

local function adler32(s)
  local a, b = 1, 0
  for i = 1, #s do
    a = (a + s:byte(i)) % 65521
    b = (b + a) % 65521
  end
  return b * 65536 + a
end

local function be32(n) return H.pack(">I4", n) end

local function zlib_stored(data)
  local out = { "\120\1" }
  local i = 1
  repeat
    local block = data:sub(i, i + 65534)
    i = i + #block
    local final = i > #data and 1 or 0
    out[#out + 1] = string.char(final) .. H.pack("<I2I2", #block, 65535 - #block) .. block
  until i > #data
  out[#out + 1] = be32(adler32(data))
  return table.concat(out)
end

local function chunk(typ, data)
  return be32(#data) .. typ .. data .. be32(crc32(typ .. data))
end
H.png_chunk = chunk

local CHANNELS = { [0] = 1, [2] = 3, [3] = 1, [4] = 2, [6] = 4 }

-- Raw scanlines (filter 0) for a sub-image of the pattern.
local function scanlines(w, h, ctype, depth, pick)
  local rows = {}
  local bps = math.floor(depth / 8)
  for y = 0, h - 1 do
    local r = { "\0" }
    for x = 0, w - 1 do
      for c = 1, CHANNELS[ctype] do
        local v = pick(x, y, c)
        if ctype == 3 then v = v % 4 end
        r[#r + 1] = bps == 2 and H.pack(">I2", v * 257) or string.char(v)
      end
    end
    rows[#rows + 1] = table.concat(r)
  end
  return table.concat(rows)
end

local ADAM7 = { { 0, 0, 8, 8 }, { 4, 0, 8, 8 }, { 0, 4, 4, 8 }, { 2, 0, 4, 4 }, { 0, 2, 2, 4 }, { 1, 0, 2, 2 }, { 0, 1, 1, 2 } }

-- png_raw{w=, h=, ctype=, depth=8, interlace=false, plte=bytes, trns=bytes}
function H.png_raw(o)
  local w, h, ctype, depth = o.w, o.h, o.ctype, o.depth or 8
  local function pick(x, y, c) return (x * 37 + y * 11 + c * 53) % 256 end
  local raw
  if o.interlace then
    local parts = {}
    for _, p in ipairs(ADAM7) do
      local x0, y0, dx, dy = p[1], p[2], p[3], p[4]
      local pw, ph = math.floor((w - x0 + dx - 1) / dx), math.floor((h - y0 + dy - 1) / dy)
      if pw > 0 and ph > 0 then
        parts[#parts + 1] = scanlines(pw, ph, ctype, depth, function(x, y, c)
          return pick(x0 + x * dx, y0 + y * dy, c)
        end)
      end
    end
    raw = table.concat(parts)
  else
    raw = scanlines(w, h, ctype, depth, pick)
  end
  local out = { "\137PNG\r\n\26\n",
    chunk("IHDR", H.pack(">I4I4BBBBB", w, h, depth, ctype, 0, 0, o.interlace and 1 or 0)) }
  if o.plte then out[#out + 1] = chunk("PLTE", o.plte) end
  if o.trns then out[#out + 1] = chunk("tRNS", o.trns) end
  out[#out + 1] = chunk("IDAT", zlib_stored(raw))
  out[#out + 1] = chunk("IEND", "")
  return table.concat(out)
end

-- A minimal JPEG with `n` components, for inspection only (CMYK): a frame
-- header, a scan header and two bytes of scan data. `scan = false` leaves
-- the scan out.
function H.jpeg_header(w, h, n, sof, scan)
  local comps, sel = {}, {}
  for i = 1, n do
    comps[#comps + 1] = string.char(i, 0x11, 0)
    sel[#sel + 1] = string.char(i, 0)
  end
  local body = string.char(8) .. H.pack(">I2I2", h, w) .. string.char(n) .. table.concat(comps)
  local sos = string.char(n) .. table.concat(sel) .. string.char(0, 63, 0)
  return "\255\216" .. "\255" .. string.char(sof or 0xC0) .. H.pack(">I2", #body + 2) .. body
    .. (scan == false and "" or ("\255\218" .. H.pack(">I2", #sos + 2) .. sos .. "\0\0")) .. "\255\217"
end

-- A PNG whose header declares w x h 1-bit grey pixels with just enough
-- IDAT bytes to hold them at deflate's best ratio: it passes inspection (a
-- real bomb could), and only the decoder's pixel limit stops it. Or, with
-- `idat`, that many bytes of image data.
function H.png_bomb(w, h, idat)
  local n = idat or math.ceil(w * h / 8 / 1032) + 16
  return "\137PNG\r\n\26\n" .. chunk("IHDR", H.pack(">I4I4BBBBB", w, h, 1, 0, 0, 0, 0))
    .. be32(n) .. "IDAT" .. string.rep("\0", n) .. "\0\0\0\0" .. chunk("IEND", "")
end

-- A PNG that inflates to far more than it weighs: w x h RGBA at 16 bits,
-- every row zero, deflated with fixed Huffman codes (a literal, then
-- 258-byte copies of it, 13 bits each), so that it passes inspection and
-- every pixel bound as a real one would. 7000 x 7000 is 2.5 MB of PNG
-- that takes stb_image about 1 GB to decode.
function H.png16_bomb(w, h)
  local n = h * (1 + w * 8) -- the inflated rows, filter bytes included
  -- Bits go out least significant first; Huffman codes most significant first.
  local out, acc, nbits = {}, 0, 0
  local function bits(v, k)
    for _ = 1, k do
      acc = acc + (v % 2) * 2 ^ nbits
      v, nbits = math.floor(v / 2), nbits + 1
      if nbits == 8 then out[#out + 1], acc, nbits = string.char(acc), 0, 0 end
    end
  end
  local function code(c, k)
    for i = k - 1, 0, -1 do bits(math.floor(c / 2 ^ i) % 2, 1) end
  end
  local function literal0() code(0x30, 8) end
  local function copy258() code(0xC5, 8) code(0, 5) end -- length 285 (258), distance 1
  bits(1, 1) bits(1, 2) -- the final block, fixed codes
  literal0()
  copy258() -- 3 + 8 + 13 bits: byte aligned from here
  local rest = n - 259
  local head = table.concat(out)
  out = {}
  for _ = 1, 8 do copy258() end -- 104 bits: 13 bytes that repeat
  local eight = table.concat(out)
  local groups = math.floor(rest / (258 * 8))
  rest = rest - groups * 258 * 8
  out = {}
  for _ = 1, math.floor(rest / 258) do copy258() end
  for _ = 1, rest % 258 do literal0() end
  code(0, 7) -- end of block
  if nbits > 0 then bits(0, 8 - nbits) end
  -- the Adler-32 of n zero bytes: a stays 1, b counts them
  local z = "\120\1" .. head .. string.rep(eight, groups) .. table.concat(out) .. be32((n % 65521) * 65536 + 1)
  return "\137PNG\r\n\26\n" .. chunk("IHDR", H.pack(">I4I4BBBBB", w, h, 16, 6, 0, 0, 0)) .. chunk("IDAT", z)
    .. chunk("IEND", "")
end

-- ---- the emulator and clients ----

-- A small request, so that the emulator's drawing stays out of the timings.
function H.small(extra)
  local r = { prompt = "x", size = "64x64", response_format = "b64_json" }
  for k, v in pairs(extra or {}) do r[k] = v end
  return r
end

function H.emulator(opts)
  return assert(require("imgedit.emulator").start(opts or {}))
end

function H.client(emu, opts)
  -- the emulator plays the seeds' gateway unless told otherwise
  local o = { base_url = emu.url, api_key = emu.key, provider = emu.provider or "apiyi" }
  for k, v in pairs(opts or {}) do o[k] = v end
  return require("imgedit").new(o)
end

-- readable(fd, wait) -> whether descriptor fd is readable now (wait 0) or
-- within wait seconds, by cqueues' poll (lua-cqueues; require it first).
-- cqueues.poll gives the object that is ready, or the timeout's number.
function H.readable(fd, wait)
  local cqueues = require "cqueues"
  local q, seen = cqueues.new(), false
  q:wrap(function()
    seen = type(cqueues.poll({ pollfd = function() return fd end, events = function() return "r" end }, wait or 0))
      == "table"
  end)
  assert(q:loop())
  return seen
end

-- world(setup): a spec's emulator and temporary folder, made once before
-- its tests (lazy_setup) and removed after them; before each test the
-- emulator forgets its log and faults and answers at once again.
-- setup(emu, dir) keeps them in the spec's locals and adds its fixtures;
-- finish(), when given, stops what setup started, before the emulator and
-- the folder go (a server whose files are in the folder); emu_opts, the
-- emulator's start options.
function H.world(setup, finish, emu_opts)
  local busted = require "busted" -- the DSL lives in the specs' environment
  local lazy_setup, lazy_teardown, before_each = busted.lazy_setup, busted.lazy_teardown, busted.before_each
  local emu, dir
  lazy_setup(function()
    emu, dir = H.emulator(emu_opts), H.tmpdir()
    setup(emu, dir)
  end)
  lazy_teardown(function()
    if finish then finish() end
    if not emu then return end
    emu:stop()
    H.rmtree(dir)
  end)
  before_each(function()
    emu:configure { latency = 0 }
    emu:clear()
  end)
end

-- A client of gpt-image-2-all, which takes small sizes: quick answers.
function H.all_client(emu, opts)
  local o = { model = "gpt-image-2-all" }
  for k, v in pairs(opts or {}) do o[k] = v end
  return H.client(emu, o)
end

-- Requests the emulator saw on its API listener.
function H.api_requests(emu)
  local out = {}
  for _, r in ipairs(emu:requests()) do
    if r.listener == "api" then out[#out + 1] = r end
  end
  return out
end

return H
