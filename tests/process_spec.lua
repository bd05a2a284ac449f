-- The process around the library (issue 27): os.exit() with transfers in
-- flight exits cleanly (over TLS too, where the crash was), a child forked
-- without exec gets a usable library and leaves the parent's transfers
-- alone, and programs the caller spawns hold none of the client's sockets.
-- Each case runs in a child process of its own; every one counts the
-- requests the emulator received.
local H = require "helpers"
local N = require "net"

-- A child Lua running `code` with this checkout's modules and test hooks.
local function child(dir, name, code, args)
  local path = H.write(dir .. "/" .. name .. ".lua", code)
  return H.sh("timeout 60 " .. H.CHILD .. H.LUA .. " " .. path .. " " .. table.concat(args or {}, " "))
end

describe("the process", function()
  local emu, dir, pic
  H.world(function(e, d)
    emu, dir = e, d
    pic = H.write(dir .. "/p.png", H.png(256, 256, function(x, y) return (x * 7 + y * 3) % 256 end))
  end)

  describe("os.exit() with transfers in flight", function()
    local EXIT = [[
      local imgedit = require "imgedit"
      local url, key, path, ca, when = ...
      local c = imgedit.new { base_url = url, api_key = key, provider = "apiyi", ca_file = ca ~= "-" and ca or nil,
        proxy = "", decode = "rgba" }
      for i = 1, 4 do
        c:submit("edit", { prompt = "x" .. i, images = { path }, stream = i % 2 == 0, partial_images = 1 })
      end
      local t0 = require("imgedit.core").now()
      while require("imgedit.core").now() - t0 < tonumber(when) do c:poll(0.001) end
      os.exit(3)
    ]]

    local function loop(url, ca, rounds)
      local bad = {}
      for i = 1, rounds do
        local out, code = child(dir, "exit", EXIT, { url, emu.key, pic, ca, tostring((i % 7) * 0.015) })
        if code ~= 3 then bad[#bad + 1] = "round " .. i .. ": exit " .. tostring(code) .. ": " .. out end
      end
      return bad
    end

    it("exits with its code over plain HTTP, every time", function()
      emu:configure { latency = 0.05 }
      local bad = loop(emu.url, "-", 10)
      assert.are.same({}, bad)
      assert.is_true(#H.api_requests(emu) <= 40)
    end)

    local missing = N.missing()
    local test = missing and function(name) it(name, function() pending("needs the Debian packages " .. missing) end) end
      or it
    test("exits with its code over TLS, every time (the crash was 1 run in 20)", function()
      local certs = N.make_ca(dir)
      local front = N.nghttpx(dir, { backend = emu.port, cert = certs.cert, key = certs.key })
      emu:configure { latency = 0.05 }
      local ok, bad = pcall(loop, front.url, certs.ca, 40)
      front:stop()
      assert(ok, bad)
      assert.are.same({}, bad)
      assert.is_true(#H.api_requests(emu) <= 160)
    end)
  end)

  describe("a child forked without exec", function()
    it("ends its inherited jobs at once, closes, makes a new client; the parent's finish", function()
      emu:configure { latency = 1.5 }
      local out, code = child(dir, "fork", [[
        local imgedit = require "imgedit"
        local proc = require "imgedit_test.proc"
        local url, key, path = ...
        local c = imgedit.new { base_url = url, api_key = key, provider = "apiyi", timeout = 30 }
        local jobs = { c:submit("edit", { prompt = "a", images = { path } }),
                       c:submit("edit", { prompt = "b", images = { path }, stream = true, partial_images = 1,
                                          decode = "rgba" }) }
        c:poll(0.3)
        local pid = proc.fork()
        if pid == 0 then
          c:poll(0) -- one look ends them: they are not waited for
          for i, j in ipairs(jobs) do
            local img, err = j:result()
            print(string.format("child job %d: %s %s %s %s", i, tostring(j:done()), tostring(img), err and err.kind,
              err and err.message))
          end
          c:close()
          print("child closed")
          local late = c -- a closed client refuses, as always
          print("child submit after close: " .. tostring(pcall(late.submit, late, "generate", { prompt = "z" })))
          local c2 = imgedit.new { base_url = url, api_key = key, provider = "apiyi", model = "gpt-image-2-all" }
          local img, err = c2:generate { prompt = "in the child", size = "64x64", response_format = "b64_json" }
          print("child new client: " .. (img and img.format or tostring(err)))
          c2:close()
          os.exit(0)
        end
        local code = proc.wait(pid)
        print("child exit " .. code)
        for i, j in ipairs(jobs) do
          local img, err = j:wait()
          print(string.format("parent job %d: %s", i, img and img.format or tostring(err)))
        end
        c:close()
      ]], { emu.url, emu.key, pic })
      assert.are.equal(0, code, out)
      assert.matches("child job 1: true nil canceled [^\n]*parent process", out)
      assert.matches("child job 2: true nil canceled", out)
      assert.matches("child closed", out)
      assert.matches("child submit after close: false", out)
      assert.matches("child new client: png", out)
      assert.matches("child exit 0", out)
      assert.matches("parent job 1: png", out)
      assert.matches("parent job 2: png", out)
      -- the two edits once each (never from the child), and the child's own generate
      local reqs = H.api_requests(emu)
      assert.are.equal(3, #reqs, out)
      local prompts = {}
      for _, r in ipairs(reqs) do prompts[#prompts + 1] = r.fields.prompt end
      table.sort(prompts)
      assert.are.same({ "a", "b", "in the child" }, prompts)
    end)
  end)

  it("spawned programs hold none of the client's sockets, and none stays open after close", function()
    emu:configure { latency = 0.8 }
    local out, code = child(dir, "spawn", [[
      local imgedit = require "imgedit"
      local url, key, path, pidfile = ...
      local c = imgedit.new { base_url = url, api_key = key, provider = "apiyi" }
      local jobs = {}
      for i = 1, 6 do jobs[i] = c:submit("edit", { prompt = "x" .. i, images = { path } }) end
      c:poll(0.3)
      -- a program started while the edits run, living on after this script
      os.execute("sh -c 'echo $$ > " .. pidfile .. "; exec sleep 5' >/dev/null 2>&1 &")
      for _, j in ipairs(jobs) do assert(j:wait()) end
      c:close()
      os.execute("sleep 0.2")
      print("done")
    ]], { emu.url, emu.key, pic, dir .. "/spawned.pid" })
    assert.are.equal(0, code, out)
    local pid = H.read(dir .. "/spawned.pid"):match("%d+")
    local fds = H.sh("ls -l /proc/" .. pid .. "/fd 2>&1")
    H.ok("kill " .. pid .. " 2>/dev/null")
    assert.is_nil(fds:match("socket:"), "the spawned program holds: " .. fds)
    assert.are.equal(6, #H.api_requests(emu))
  end)
end)
