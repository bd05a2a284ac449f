-- The LÖVE example runs under Xvfb with a time limit: frames keep coming
-- while the edit runs, and the picture arrives. LÖVE embeds LuaJIT, so this
-- uses the LuaJIT build of the C modules (made here if missing), without
-- the sanitizer runtime the ASan suite preloads: nothing in LÖVE is built
-- for it, and its allocator would make the frames' figures its own.
local H = require "helpers"

describe("the LÖVE example", function()
  -- what is missing, by its Debian package, so the skip says what to install
  local missing = {}
  for _, need in ipairs { { "command -v love", "love" }, { "command -v xvfb-run", "xvfb" },
    { "pkg-config --exists luajit", "libluajit2-5.1-dev" } } do
    if not H.ok(need[1] .. " >/dev/null 2>&1") then missing[#missing + 1] = need[2] end
  end
  local reason = "needs love, xvfb-run and LuaJIT's headers (missing the Debian packages " .. table.concat(missing, ", ") .. ")"
  local runner = #missing == 0 and it or function(name) it(name, function() pending(reason) end) end
  runner("keeps drawing frames while an edit streams in, the pictures decoded off the frame", function()
    assert.is_true(H.ok("make --no-print-directory LUA=luajit all >/dev/null 2>&1"))
    local p = io.popen("env -u IMGEDIT_API_KEY -u LD_PRELOAD LUA_CPATH='build/luajit/?.so;;' LUA_PATH='lua/?.lua;lua/?/init.lua;;' "
      .. "xvfb-run -a timeout 90 love examples/love 2>&1; echo exit=$?")
    local out = p:read("*a")
    p:close()
    assert.matches("exit=0", out)
    local frames, _, partials, shown, predecoded, from, to, w, h = out:match("frames_waiting=(%d+) longest_frame_ms=[%d.]+"
      .. " longest_frame_cpu_ms=([%d.]+) picture_frame_ms=[%d.]+ handover_cpu_ms=[%d.]+ partials=(%d+) shown=(%d+)"
      .. " predecoded=(%d+)"
      .. " bar_waiting=([%d.]+)%-([%d.]+) image=(%d+)x(%d+)")
    assert.truthy(frames, out)
    assert.is_true(tonumber(frames) >= 20, "frames while waiting: " .. frames)
    assert.are.equal("2", partials)
    assert.are.equal("3", shown) -- two partials sharpening, then the result, each into the texture
    assert.are.same({ "1024", "1024" }, { w, h })
    -- the bar moved while the model worked, before any partial came
    assert.is_true(tonumber(to) > tonumber(from) + 0.02, out)
    -- No frame decoded a picture: each arrived with its pixels in a buffer,
    -- made on imgedit's decoder thread and handed over without a copy. What a frame costs (its CPU and wall time)
    -- is a figure for the benchmark and the README, never a test's: a busy
    -- machine's scheduler makes any time bound a matter of luck.
    assert.are.equal("3", predecoded, out)
    if os.getenv("IMGEDIT_TEST_VERBOSE") then print(out) end
  end)
end)
