-- Nothing hostile reaches a terminal, and no credential is printed: text
-- from outside (a manifest's names, a picture's lineage, the service's
-- messages and fields) is shown with its controls escaped (\x1b), --json
-- stays exact JSON, and the user and password of a base url or a proxy url
-- are redacted like the key. The command runs as a user runs it, its
-- stdout and stderr read apart, byte for byte.
local H = require "helpers"
local N = require "net"
local cjson = require "cjson"
local core = require "imgedit.core"
local imgedit = require "imgedit"
local lineage = require "imgedit.lineage"
local text = require "imgedit.text"

local ESC, BEL, CSI8 = "\27", "\7", "\194\155" -- CSI8: U+009B, C1's CSI

-- This machine's proxy variables stay out: the tests choose their own.
local BASE = "env -u IMGEDIT_API_KEY -u IMGEDIT_BASE_URL -u IMGEDIT_PROVIDER -u HTTPS_PROXY -u https_proxy"
  .. " -u HTTP_PROXY -u http_proxy -u ALL_PROXY -u all_proxy LUA_PATH='lua/?.lua;lua/?/init.lua;;' LUA_CPATH='"
  .. H.BUILD .. "/?.so;;' "

-- The shell's printf writes the controls into an argument (dash has no $'').
local function arg_of(s)
  return "\"$(printf '" .. s:gsub("\27", "\\033"):gsub("\7", "\\007"):gsub("'", "'\\''") .. "')\""
end

describe("the terminal", function()
  local emu, dir, pic
  H.world(function(e, d)
    emu, dir = e, d
    pic = H.write(dir .. "/a.png", H.png(32, 32))
  end)

  -- run(args [, env]) -> stdout, stderr, exit code: the command with this
  -- spec's emulator as its service unless env names another.
  local n = 0
  local function run(args, env)
    n = n + 1
    local o, e = dir .. "/stdout-" .. n, dir .. "/stderr-" .. n
    local vars = env or ("IMGEDIT_BASE_URL=" .. emu.url)
    local _, code = H.sh("{ " .. BASE .. "IMGEDIT_API_KEY=" .. emu.key .. " IMGEDIT_PROVIDER=apiyi " .. vars .. " "
      .. H.LUA .. " bin/imgedit " .. args .. " >'" .. o .. "' 2>'" .. e .. "'; }")
    return H.read(o), H.read(e), code
  end

  -- No control byte of a terminal in what was printed (newlines end lines).
  local function clean(s, what)
    assert.is_nil(s:find("[%z\1-\9\11-\31\127]"), what .. " holds a control character: " .. s)
    assert.is_nil(s:find("\194[\128-\159]"), what .. " holds a C1 character: " .. s)
  end

  local function out_path()
    n = n + 1
    return dir .. "/out-" .. n .. ".png"
  end

  describe("text.escape", function()
    it("shows C0, DEL, C1 and stray bytes as \\xHH, and keeps UTF-8 text and tabs", function()
      assert.are.equal("a\\x1b]0;t\\x07b\\x1b[2Jc\\x0dd\\x7fe", text.escape("a\27]0;t\7b\27[2Jc\rd\127e"))
      assert.are.equal("\\xc2\\x9b2J \\x9b2J", text.escape(CSI8 .. "2J \155" .. "2J"))
      assert.are.equal("café à l'été, 猫, 😀\tok", text.escape("café à l'été, 猫, 😀\tok"))
      assert.are.equal("\\xed\\xa0\\x80 \\xc0\\xaf \\xff", text.escape("\237\160\128 \192\175 \255"))
      assert.are.equal("one\\x0atwo", text.escape("one\ntwo"))
      assert.are.equal("one\ntwo", text.escape("one\ntwo", true))
      local plain = "nothing to escape here"
      assert.are.equal(plain, text.escape(plain))
      -- escaping twice changes nothing: a line printed through two layers reads the same
      local once = text.safe("x\27[2J http://u:p@h/ \155")
      assert.are.equal(once, text.safe(once))
    end)

    it("redacts the user and password of every url, not the rest", function()
      assert.are.equal("POST http://***@127.0.0.1:9/v1/images and socks5h://***@proxy:1080 http://h/a@b",
        text.redact("POST http://user:s3cret@127.0.0.1:9/v1/images and socks5h://u:p@ss@proxy:1080 http://h/a@b"))
    end)
  end)

  describe("text from outside is escaped, and still reaches the user", function()
    it("a batch manifest's job name", function()
      local m = H.write(dir .. "/m.jsonl", cjson.encode { name = "x" .. ESC .. "]0;pwned" .. BEL .. ESC .. "[2Jy",
        prompt = "p", images = { pic } } .. "\n")
      local out, err, code = run("batch " .. m .. " -o " .. dir .. "/batch-out")
      assert.are.equal(3, code, err)
      clean(out, "stdout")
      clean(err, "stderr")
      assert.truthy(err:find("bad name 'x\\x1b]0;pwned\\x07\\x1b[2Jy'", 1, true), err)
      assert.are.equal(0, #H.api_requests(emu))
    end)

    it("a picture's lineage, in imgedit inspect, and exact in its --json", function()
      local rec = lineage.record { prompt = "sky " .. ESC .. "]0;pwned" .. BEL .. " blue " .. ESC .. "[2J" .. CSI8 .. "end",
        model = "gpt-image-2" .. ESC .. "[8m", step = "st" .. ESC .. "[2Jep", request_id = "req" .. ESC .. "[1m",
        params = { quality = "low" .. ESC .. "c" }, parents = { "ab" .. ESC .. "[3J" } }
      local f = H.write(dir .. "/lin" .. ESC .. "[2J.png", assert(core.xmp_embed(H.png(16, 16), lineage.packet(rec))))
      local out, err, code = run("inspect '" .. f .. "'")
      assert.are.equal(0, code, err)
      clean(out, "stdout")
      clean(err, "stderr")
      for _, want in ipairs { "lin\\x1b[2J.png: png 16x16", "made by gpt-image-2\\x1b[8m as step st\\x1b[2Jep",
        "\"sky \\x1b]0;pwned\\x07 blue \\x1b[2J\\xc2\\x9bend\"", "quality=low\\x1bc", "input 1 sha256 ab\\x1b[3J",
        "request req\\x1b[1m" } do
        assert.truthy(out:find(want, 1, true), want .. " not in: " .. out)
      end
      out, err, code = run("inspect --json '" .. f .. "'")
      assert.are.equal(0, code, err)
      clean(out, "stdout") -- C1 written \u009b: still the same JSON
      local t = cjson.decode(out)
      assert.are.equal(rec.prompt, t.files[1].lineage.prompt)
      assert.are.equal(rec.step, t.files[1].lineage.step)
      assert.are.equal(f, t.files[1].file)
    end)

    local MESSAGE = "Invalid size " .. ESC .. "]0;pwned" .. BEL .. "hidden" .. ESC .. "[8m text " .. ESC .. "[2J"
      .. CSI8 .. "31m, use 1024x1024."
    local function hostile()
      emu:inject { status = 400, body = cjson.encode { error = { message = MESSAGE, type = "invalid_request_error",
        param = "size" .. ESC .. "[31m", code = "bad_size" .. ESC .. "]0;t" .. BEL } } }
    end

    it("the service's error message, param and code, printed by imgedit edit", function()
      hostile()
      local out, err, code = run("edit -p x -i " .. pic .. " --retries 0 -o " .. out_path())
      assert.are.equal(3, code, err)
      assert.are.equal("", out)
      clean(err, "stderr")
      assert.truthy(err:find("Invalid size \\x1b]0;pwned\\x07hidden\\x1b[8m text \\x1b[2J\\xc2\\x9b31m, use 1024x1024.",
        1, true), err)
      assert.truthy(err:find("param size\\x1b[31m", 1, true), err)
      assert.truthy(err:find("code bad_size\\x1b]0;t\\x07", 1, true), err)
      assert.are.equal(1, #H.api_requests(emu))
    end)

    it("--json stays exact JSON: the service's strings round-trip", function()
      hostile()
      local out, err, code = run("edit --json -p x -i " .. pic .. " --retries 0 -o " .. out_path())
      assert.are.equal(3, code, err)
      clean(out, "stdout")
      clean(err, "stderr")
      local t = cjson.decode(out)
      assert.is_false(t.ok)
      assert.are.same({ MESSAGE, "size" .. ESC .. "[31m", "bad_size" .. ESC .. "]0;t" .. BEL },
        { t.error.message, t.error.param, t.error.code })
      -- and a batch's line per job
      hostile()
      local m = H.write(dir .. "/one.jsonl", cjson.encode { name = "one", prompt = "p", images = { pic } } .. "\n")
      out, err = run("batch --json --retries 0 " .. m .. " -o " .. dir .. "/batch-json")
      clean(out, "stdout")
      clean(err, "stderr")
      local job = cjson.decode(out:match("^[^\n]+"))
      assert.are.same({ "one", "failed", MESSAGE }, { job.name, job.status, job.error.message })
    end)

    it("the library: err.message stays exact, tostring(err) and the default warning are escaped", function()
      emu:inject { status = 400, body = cjson.encode { error = { message = MESSAGE, param = "size" .. ESC .. "[31m" } } }
      local img, e = H.all_client(emu, { max_retries = 0 }):generate(H.small())
      assert.is_nil(img)
      assert.are.equal(MESSAGE, e.message)
      local s = tostring(e)
      clean(s, "tostring(err)")
      assert.truthy(s:find("Invalid size \\x1b]0;pwned\\x07hidden", 1, true), s)
      assert.truthy(s:find("param size\\x1b[31m", 1, true), s)
      -- on_warning's default: a line on stderr
      local w = dir .. "/warn.err"
      H.sh("{ " .. BASE .. H.LUA .. " -e 'require(\"imgedit\").new{api_key = \"k\"}:_warn(\"shut \\27]0;t\\7down\")'"
        .. " 2>'" .. w .. "'; }")
      local err = H.read(w)
      clean(err, "stderr")
      assert.truthy(err:find("imgedit: warning: shut \\x1b]0;t\\x07down", 1, true), err)
    end)

    it("a prompt in -v's request line", function()
      local out, err, code = run("generate -v -p " .. arg_of("a " .. ESC .. "[2Jred kite") .. " --size 1024x1024 -o "
        .. out_path())
      assert.are.equal(0, code, err)
      clean(out, "stdout")
      clean(err, "stderr")
      assert.truthy(err:find('prompt="a \\x1b[2Jred kite"', 1, true), err)
      assert.are.equal("a " .. ESC .. "[2Jred kite", emu:requests()[1].fields.prompt)
    end)
  end)

  describe("a url's user and password are never printed", function()
    local function with_creds(url, scheme)
      return url:gsub("^http://", (scheme or "http") .. "://user:s3cret@")
    end

    it("-v with a base url holding them: the request goes, the line shows ***@", function()
      local out, err, code = run("generate -v -p x --size 1024x1024 -o " .. out_path(),
        "IMGEDIT_BASE_URL=" .. with_creds(emu.url))
      assert.are.equal(0, code, err)
      assert.is_nil((out .. err):find("s3cret", 1, true), out .. err)
      assert.truthy(err:find("POST http://***@127.0.0.1:" .. emu.port .. "/v1/images/generations", 1, true), err)
      assert.are.equal(1, #H.api_requests(emu))
    end)

    it("a proxy url holding them: not reachable, or refused by --proxy's check", function()
      local dead = "http://puser:s3cret@127.0.0.1:" .. N.free_port()
      local out, err, code = run("generate -v -p x --size 1024x1024 --retries 0 --proxy " .. dead .. " -o " .. out_path(),
        "IMGEDIT_BASE_URL=" .. with_creds(emu.url))
      assert.are.equal(6, code, err)
      assert.matches("the proxy could not be reached", err)
      assert.is_nil((out .. err):find("s3cret", 1, true), out .. err)
      out, err, code = run("generate --json -p x --proxy ftp://puser:s3cret@127.0.0.1:1 -o " .. out_path())
      assert.are.equal(2, code, err)
      assert.matches("bad option 'proxy'", err)
      assert.is_nil((out .. err):find("s3cret", 1, true), out .. err)
      assert.are.equal(0, #H.api_requests(emu))
    end)

    it("a working proxy that wants them (tinyproxy, BasicAuth)", function()
      if N.missing() then pending("needs the Debian packages " .. N.missing()) return end
      local proxy = N.tinyproxy(dir, { basic_auth = "puser s3cret" })
      local url = proxy.url:gsub("^http://", "http://puser:s3cret@")
      local env = "IMGEDIT_BASE_URL=" .. with_creds(emu.url)
      local out, err, code = run("generate -v -p x --size 1024x1024 --proxy " .. url .. " -o " .. out_path(), env)
      local _, err2, code2 = run("generate -v -p x --size 1024x1024 --retries 0 --proxy "
        .. url:gsub("s3cret", "wrong-s3cret") .. " -o " .. out_path(), env)
      proxy:stop()
      assert.are.equal(0, code, err)
      assert.is_nil((out .. err):find("s3cret", 1, true), out .. err)
      assert.are_not.equal(0, code2)
      assert.is_nil(err2:find("s3cret", 1, true), err2)
      assert.are.equal(1, #H.api_requests(emu))
    end)

    it("a TLS failure names the host without them", function()
      local _, err, code = run("generate -p x --size 1024x1024 --retries 0 -o " .. out_path(),
        "IMGEDIT_BASE_URL=" .. with_creds(emu.url, "https"))
      assert.are.equal(6, code, err)
      assert.truthy(err:find("cannot trust 127.0.0.1:" .. emu.port .. " over TLS", 1, true), err)
      assert.is_nil(err:find("s3cret", 1, true), err)
    end)

    it("the library: tostring(client) and errors, as for the key; err.url stays whole", function()
      local c = imgedit.new { base_url = with_creds(emu.url), api_key = "sk-test-key", proxy = "" }
      assert.are.equal("imgedit.client(compatible, http://***@127.0.0.1:" .. emu.port .. "/v1, gpt-image-2)", tostring(c))
      c:close()
      local ok, msg = pcall(imgedit.new, { base_url = "ftp://user:s3cret@host/v1" })
      assert.is_false(ok)
      assert.is_nil(tostring(msg):find("s3cret", 1, true), msg)
      local e = require("imgedit.errors").new("network", "could not reach https://user:s3cret@host/v1 with sk-test-key",
        { url = "https://cdn:token@host/p.png" }, "sk-test-key")
      assert.are.equal("could not reach https://***@host/v1 with [redacted]", e.message)
      assert.are.equal("https://cdn:token@host/p.png", e.url)
    end)
  end)
end)
