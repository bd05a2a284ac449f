-- The LÖVE example runs under Xvfb with a time limit: frames keep coming
-- while the edit runs, and the picture arrives. LÖVE embeds LuaJIT, so this
-- uses the LuaJIT build of the C modules (made here if missing).
local H = require "helpers"

describe("the LÖVE example", function()
  local have = H.ok("command -v love >/dev/null && command -v xvfb-run >/dev/null && pkg-config --exists luajit")
  local runner = have and it or pending
  runner("keeps drawing frames while an edit streams in, then shows the image", function()
    assert.is_true(H.ok("make --no-print-directory BUILD=build-luajit LUA=luajit all >/dev/null 2>&1"))
    local p = io.popen("env -u IMGEDIT_API_KEY LUA_CPATH='build-luajit/?.so;;' LUA_PATH='lua/?.lua;lua/?/init.lua;;' "
      .. "xvfb-run -a timeout 90 love examples/love 2>&1; echo exit=$?")
    local out = p:read("*a")
    p:close()
    assert.matches("exit=0", out)
    local frames, longest, partials, w, h = out:match(
      "frames_waiting=(%d+) longest_frame_ms=([%d.]+) partials=(%d+) image=(%d+)x(%d+)")
    assert.truthy(frames, out)
    assert.is_true(tonumber(frames) >= 20, "frames while waiting: " .. frames)
    assert.are.equal("2", partials)
    assert.are.same({ "1024", "1024" }, { w, h })
    -- no frame waited for the network; a loose bound, the note has the numbers
    assert.is_true(tonumber(longest) < 1000 * H.SLOW, "longest frame " .. longest .. " ms")
  end)
end)
