-- The imgedit command, run as a user runs it: a child process against this
-- process's emulator, checked by its output, its files and its exit code.
local H = require "helpers"
local cjson = require "cjson"

local BASE = "env -u IMGEDIT_API_KEY -u IMGEDIT_BASE_URL LUA_PATH='lua/?.lua;lua/?/init.lua;;' LUA_CPATH='" .. H.BUILD .. "/?.so;;' "

local sh = H.sh

describe("the imgedit command", function()
  local emu, dir, pic
  H.world(function(e, d)
    emu, dir = e, d
    pic = H.write(dir .. "/a.png", H.png(32, 32))
    H.write(dir .. "/b.gif", "GIF89a" .. H.pack("<I2I2", 8, 8) .. string.rep("\0", 20))
  end)

  local function cli(args, key)
    return sh(BASE .. "IMGEDIT_API_KEY=" .. (key or emu.key) .. " IMGEDIT_BASE_URL=" .. emu.url .. " IMGEDIT_PROVIDER=apiyi "
      .. H.LUA .. " bin/imgedit " .. args)
  end

  local n = 0
  local function out_path(ext)
    n = n + 1
    return dir .. "/out" .. n .. "." .. (ext or "png")
  end

  describe("edit and generate", function()
    it("edits several images into the output and says what it wrote", function()
      local o = out_path()
      local out, code = cli("edit -p 'fuse them' -i " .. pic .. " -i " .. pic .. " --size 1024x1024 --quality low -o " .. o)
      assert.are.equal(0, code, out)
      assert.matches("1024x1024", out)
      assert.are.equal("png", require("imgedit").inspect(o).format)
      local r = emu:requests()[1]
      assert.are.equal(2, #r.files)
      assert.are.equal("low", r.fields.quality)
      assert.is_nil(out:find(emu.key, 1, true))
    end)

    it("sends a mask, and prints JSON metadata with --json", function()
      local m = dir .. "/m.png"
      assert.are.equal(0, select(2, cli("mask --like " .. pic .. " --rect 0,0,16,16 -o " .. m)))
      local o = out_path("webp")
      local out, code = cli("edit -p x -i " .. pic .. " --mask " .. m .. " --format webp --compression 70 --json -o " .. o)
      assert.are.equal(0, code, out)
      local t = cjson.decode(out)
      assert.are.same({ o, "webp" }, { t.path, t.format })
      assert.is_true(t.usage.total_tokens > 0)
      assert.are.equal("mask", emu:requests()[1].files[2].field)
    end)

    it("generates, and refuses to overwrite without --force", function()
      local o = out_path()
      assert.are.equal(0, select(2, cli("generate -p sky -o " .. o)))
      local out, code = cli("generate -p sky -o " .. o)
      assert.are.equal(3, code)
      assert.matches("exists; use %-%-force", out)
      assert.are.equal(1, #emu:requests())
      assert.are.equal(0, select(2, cli("generate -p sky --force -o " .. o)))
    end)

    it("exits 3 for invalid input, before any request", function()
      local _, code = cli("edit -p x -i " .. dir .. "/missing.png -o " .. out_path())
      assert.are.equal(3, code)
      local out
      out, code = cli("edit -p x -i " .. dir .. "/b.gif -o " .. out_path())
      assert.are.equal(3, code)
      assert.matches("gif images are not accepted", out)
      _, code = cli("generate -p x --size 100x100 -o " .. out_path())
      assert.are.equal(3, code)
      assert.are.equal(0, #emu:requests())
    end)

    it("exits 4 for auth failures, and never prints the key", function()
      local wrong = "sk-wrong-key-for-the-cli-test"
      local out, code = cli("generate -p x -o " .. out_path(), wrong)
      assert.are.equal(4, code)
      assert.is_nil(out:find(wrong, 1, true))
      out, code = sh(BASE .. "IMGEDIT_BASE_URL=" .. emu.url .. " " .. H.LUA .. " bin/imgedit generate -p x -o " .. out_path())
      assert.are.equal(4, code)
      assert.matches("IMGEDIT_API_KEY", out)
    end)

    it("exits 5 on rate limits, 6 on server and network failures, 7 on timeouts", function()
      emu:inject { status = 429 }
      assert.are.equal(5, select(2, cli("generate -p x --retries 0 -o " .. out_path())))
      emu:inject { status = 500 }
      assert.are.equal(6, select(2, cli("generate -p x --retries 0 -o " .. out_path())))
      emu:inject { bad_json = true }
      assert.are.equal(6, select(2, cli("generate -p x -o " .. out_path())))
      local _, code = sh(BASE .. "IMGEDIT_API_KEY=k IMGEDIT_BASE_URL=http://127.0.0.1:1/v1 " .. H.LUA .. " bin/imgedit "
        .. "generate -p x --retries 0 -o " .. out_path())
      assert.are.equal(6, code)
      emu:inject { delay = 2 }
      assert.are.equal(7, select(2, cli("generate -p x --timeout 0.4 -o " .. out_path())))
    end)

    it("exits 2 on usage errors", function()
      local out, code = cli("edit -p x -o " .. out_path()) -- no -i
      assert.are.equal(2, code)
      assert.matches("Usage", out)
      assert.are.equal(2, select(2, cli("bogus")))
      assert.are.equal(2, select(2, cli("generate -p x --timeout soon -o " .. out_path())))
    end)

    it("--verbose shows the request and each retry, never the key", function()
      emu:inject { status = 503 }
      local out, code = cli("generate -p 'a red kite' --size 1024x1024 --verbose -o " .. out_path())
      assert.are.equal(0, code, out)
      assert.matches("POST http://127%.0%.0%.1:%d+/v1/images/generations model=gpt%-image%-2 prompt=\"a red kite\" size=1024x1024", out)
      assert.matches("attempt 1 failed %(server, HTTP 503%); retrying in", out)
      assert.is_nil(out:find(emu.key, 1, true))
    end)

    it("shows progress on a terminal, and nothing when stderr is not one", function()
      emu:configure { latency = 1.3 }
      local o = out_path()
      local cmd = BASE .. "IMGEDIT_API_KEY=" .. emu.key .. " IMGEDIT_BASE_URL=" .. emu.url
        .. " " .. H.LUA .. " bin/imgedit edit -p x -i " .. pic .. " -o " .. o
      local out, code = sh("script -qec \"" .. cmd .. "\" /dev/null")
      assert.are.equal(0, code, out)
      assert.matches("upload   %[", out)
      assert.matches("waiting for the model [|/\\%-] %d+s", out)
      assert.matches("download ", out)
      local plain = sh(cmd:gsub(" %-o .*$", " -o " .. out_path()))
      assert.is_nil(plain:find("waiting for the model", 1, true))
      local quiet = sh("script -qec \"" .. cmd:gsub(" %-o .*$", " -q -o " .. out_path()) .. "\" /dev/null")
      assert.is_nil(quiet:find("waiting for the model", 1, true))
    end)
  end)

  describe("paid pictures and --json", function()
    -- stdout alone, for the JSON object
    local function cli_stdout(args)
      local p = io.popen(BASE .. "IMGEDIT_API_KEY=" .. emu.key .. " IMGEDIT_BASE_URL=" .. emu.url .. " " .. H.LUA
        .. " bin/imgedit " .. args .. " 2>/dev/null; echo \"exit=$?\"")
      local out = p:read("*a")
      p:close()
      return out:gsub("exit=%d+%s*$", ""), tonumber(out:match("exit=(%d+)%s*$"))
    end

    it("checks before sending that the output can be written", function()
      H.write(dir .. "/plainfile", "x")
      for _, o in ipairs { dir .. "/missing/dir/out.png", dir .. "/plainfile/out.png", pic } do
        local out, code = cli("generate -p x -o " .. o)
        assert.are.equal(3, code, out)
      end
      local out = cli("generate -p x -o " .. dir .. "/missing/dir/out.png")
      assert.matches("does not exist", out)
      assert.are.equal(0, #emu:requests())
    end)

    it("refuses a folder as the output before sending, even with --force", function()
      os.execute("mkdir -p '" .. dir .. "/taken/inner'")
      local out, code = cli("generate -p x --force -o " .. dir .. "/taken")
      assert.are.equal(3, code, out)
      assert.matches("is a folder", out)
      assert.are.equal(0, #emu:requests())
    end)

    it("saves a paid picture elsewhere when the output still cannot take it, and exits 8", function()
      -- In this process, with the write of the output itself failing after
      -- payment (a disk that fills up while the model works).
      local core = require "imgedit.core"
      local cli_mod = require "imgedit.cli"
      local target = dir .. "/full.png"
      local G = _G
      local write, printed, old_print, old_stderr = core.write_atomic, {}, G.print, io.stderr
      core.write_atomic = function(path, bytes)
        if path == target then return nil, "cannot write: No space left on device", "io" end
        return write(path, bytes)
      end
      G.print = function(s) printed[#printed + 1] = s end
      io.stderr = { write = function() end }
      local defaults = require("imgedit").defaults
      defaults.base_url, defaults.api_key = emu.url, emu.key
      local ok, code = pcall(cli_mod.main, { "generate", "-p", "rescue me", "-q", "--json", "-o", target })
      core.write_atomic, G.print, io.stderr = write, old_print, old_stderr
      defaults.base_url, defaults.api_key = nil, nil
      assert.is_true(ok, tostring(code))
      assert.are.equal(8, code)
      assert.are.equal(1, #emu:requests())
      local t = cjson.decode(printed[1])
      assert.is_false(t.ok)
      assert.are.equal("io", t.error.kind)
      assert.matches("No space left on device", t.error.message)
      assert.are.equal(dir, t.error.saved_to:match("^(.*)/"))
      assert.matches("imgedit%-rescued%-%x+%.png$", t.error.saved_to)
      assert.are.equal("png", require("imgedit").inspect(t.error.saved_to).format)
      assert.is_false(H.exists(target))
    end)

    it("prints exactly one JSON object on stdout, for success and for failure", function()
      local json, code = cli_stdout("generate -p x --json -o " .. out_path())
      assert.are.equal(0, code)
      local t = cjson.decode(json)
      assert.is_true(t.ok)
      assert.matches("^req_emu_", t.request_id)
      emu:inject { status = 500 }
      json, code = cli_stdout("generate -p x --retries 0 --json -o " .. out_path())
      assert.are.equal(6, code)
      t = cjson.decode(json)
      assert.is_false(t.ok)
      assert.are.equal("server", t.error.kind)
      assert.are.equal(500, t.error.status)
      assert.matches("^req_emu_", t.error.request_id)
      json, code = cli_stdout("generate -p x --timeout soon --json -o " .. out_path())
      assert.are.equal(2, code)
      assert.are.equal("usage", cjson.decode(json).error.kind)
      json = cli_stdout("inspect --json " .. dir .. "/nothing.png")
      t = cjson.decode(json)
      assert.is_false(t.ok)
      assert.are.equal("invalid_request", t.files[1].error.kind)
      json = cli_stdout("mask --size 64x64 --rect 0,0,32,32 --json -o " .. out_path())
      assert.matches('"warnings":%[%]', json)
      assert.matches('"problems":%[%]', json)
      assert.is_true(cjson.decode(json).ok)
    end)

    it("asks the service for the format the output's name says, or converts", function()
      local o = out_path("jpg")
      local out, code = cli("generate -p x --size 1024x1024 -o " .. o)
      assert.are.equal(0, code, out)
      assert.are.equal("jpeg", emu:requests()[1].json.output_format)
      assert.are.equal("jpeg", require("imgedit").inspect(o).format)
      -- gpt-image-2-all always answers PNG: the picture is converted, and
      -- what the command says is what it wrote
      o = out_path("jpg")
      out, code = cli("generate -p x --model gpt-image-2-all --response-format b64_json -o " .. o)
      assert.are.equal(0, code, out)
      local info = require("imgedit").inspect(o)
      assert.are.equal("jpeg", info.format)
      assert.matches(": jpeg 1024x1024, .*%(converted from png%)", out)
      local json = cli_stdout("generate -p x --model gpt-image-2-all --response-format b64_json --force --json -o " .. o)
      local t = cjson.decode(json)
      assert.are.equal("jpeg", t.format)
      assert.are.equal(require("imgedit").inspect(o).bytes, t.bytes)
      assert.are.equal(require("imgedit.core").sha256_file(o), t.sha256)
    end)
  end)

  describe("inspect", function()
    it("tells format, size, alpha and use, as text or JSON", function()
      local out, code = cli("inspect " .. pic .. " " .. dir .. "/b.gif")
      assert.are.equal(0, code, out)
      assert.matches("a%.png: png 32x32, 4 channels with alpha, %d+ B, usable as a mask", out)
      assert.matches("b%.gif: gif 8x8.*not accepted for upload", out)
      out = cli("inspect --json " .. pic)
      local t = cjson.decode(out)
      assert.is_true(t.ok)
      assert.is_true(t.files[1].ok_as_mask and t.files[1].ok_as_image)
      local _, bad = cli("inspect " .. dir .. "/missing.png")
      assert.are.equal(3, bad)
    end)
  end)

  describe("mask", function()
    it("draws shapes the size of a base and reports the coverage", function()
      local m = dir .. "/shapes.png"
      local out, code = cli("mask --like " .. pic .. " --rect 0,0,16,32 --keep 0,0,16,16 -o " .. m)
      assert.are.equal(0, code, out)
      assert.matches("32x32 mask, 25%.0%% to edit", out)
      local info = require("imgedit").inspect(m)
      assert.are.same({ "png", true, 32 }, { info.format, info.has_alpha, info.width })
      out, code = cli("mask --size 40x20 --ellipse 0,0,40,20 --json -o " .. dir .. "/e.png")
      assert.are.equal(0, code, out)
      local r = cjson.decode(out)
      assert.is_true(math.abs(r.coverage - math.pi / 4) < 0.02)
    end)

    it("converts a black-and-white picture, resized to the base", function()
      local bw = H.write(dir .. "/bw.png", require("imgedit.core").encode(
        string.rep(string.rep("\255\255\255\255", 8) .. string.rep("\0\0\0\255", 8), 16), 16, 16, "png"))
      local m = dir .. "/fromgray.png"
      local out, code = cli("mask --from-gray " .. bw .. " --threshold 0.5 --like " .. pic .. " -o " .. m)
      assert.are.equal(0, code, out)
      -- upscaling softens the edge column: about half, never more
      local pct = tonumber(out:match("32x32 mask, ([%d.]+)%% to edit"))
      assert.is_true(pct > 43 and pct <= 50, out)
    end)

    it("warns when the mask would edit nothing, and checks its arguments", function()
      local out, code = cli("mask --size 8x8 --rect 0,0,0,0 -o " .. dir .. "/none.png")
      assert.are.equal(0, code)
      assert.matches("warning: the mask is fully opaque", out)
      assert.are.equal(2, select(2, cli("mask --size 8x8 --rect 1,2 -o " .. dir .. "/x.png")))
      assert.are.equal(2, select(2, cli("mask --rect 0,0,1,1 -o " .. dir .. "/x.png")))
      assert.are.equal(3, select(2, cli("mask --size 8x8 --rect 0,0,1,1 -o " .. dir .. "/none.png")))
    end)
  end)

  describe("run", function()
    it("runs a pipeline script with the library and its arguments", function()
      local script = H.write(dir .. "/script.lua", [[
        local client = imgedit.new {}
        local p = imgedit.pipeline { client = client, dir = arg[1], cache = false, quiet = true }
        local a = assert(p:generate("a", { prompt = arg[2], size = "1024x1024" }))
        print("made " .. a.path)
      ]])
      local out, code = cli("run " .. script .. " " .. dir .. "/runout 'a kite'")
      assert.are.equal(0, code, out)
      assert.matches("made .*/runout/a%.png", out)
      assert.are.equal("a kite", emu:requests()[1].json.prompt)
    end)

    it("--emulate runs a script offline, and errors map to exit codes", function()
      local script = H.write(dir .. "/offline.lua", [[
        local c = imgedit.new {}
        assert(c:generate { prompt = "x" })
        print(c.base_url)
        -- a pipeline and a batch without a client go there too; no global is written
        local p = imgedit.pipeline { dir = os.tmpname() .. ".d", cache = false, quiet = true }
        print("pipeline " .. p.client.base_url)
        print("defaults " .. tostring(next(imgedit.defaults)))
        assert(c:generate { prompt = "x", size = "1x1" })
      ]])
      local out, code = sh(BASE .. "" .. H.LUA .. " bin/imgedit run --emulate " .. script)
      assert.are.equal(3, code, out)
      assert.matches("http://127%.0%.0%.1:%d+/v1", out)
      assert.matches("pipeline http://127%.0%.0%.1:%d+/v1", out)
      assert.matches("defaults nil", out)
      assert.matches("invalid_request", out)
    end)
  end)

  describe("emulate", function()
    it("serves the emulator and prints its url and key", function()
      local pidf = io.popen(BASE .. "sh -c '" .. H.LUA .. " bin/imgedit emulate --latency 0 > " .. dir .. "/emu.txt 2>&1 & echo $!'")
      local pid = pidf:read("*l")
      pidf:close()
      local text = ""
      for _ = 1, 100 do
        text = H.exists(dir .. "/emu.txt") and H.read(dir .. "/emu.txt") or ""
        if text:find("export", 1, true) then break end
        os.execute("sleep 0.05")
      end
      local url, key = text:match("url (%S+)"), text:match("key (%S+)")
      assert.truthy(url and key, text)
      local out, code = sh(BASE .. "IMGEDIT_API_KEY=" .. key .. " IMGEDIT_BASE_URL=" .. url
        .. " " .. H.LUA .. " bin/imgedit generate -p x -o " .. out_path())
      os.execute("kill " .. pid)
      assert.are.equal(0, code, out)
    end)
  end)

  it("has --help for every command, with the exit codes", function()
    for _, c in ipairs { "", "edit", "generate", "run", "inspect", "mask", "emulate" } do
      local out, code = cli(c .. " --help")
      assert.are.equal(0, code, c)
      assert.matches("Usage: imgedit", out)
      assert.matches("Exit codes: 0 success", out)
    end
  end)
end)
