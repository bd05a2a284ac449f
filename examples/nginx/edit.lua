-- An edit served by nginx without blocking its worker (content_by_lua_file;
-- nginx.conf beside this file). POST /edit?prompt=...: the request's body,
-- when it has one, is picture 1, and the files named in IMGEDIT_NGINX_IMAGES
-- (comma-separated paths on this server) follow it; with no picture at all
-- it is a generation. `size` and `quality` may come as arguments too.
-- Answers the picture, or a JSON error {error = {kind, message, ...}}.
local cjson = require "cjson.safe"
local ingx = require "imgedit.ngx"

-- The worker's client, made by the first request (key and url from
-- IMGEDIT_API_KEY and IMGEDIT_BASE_URL, passed by nginx's env lines).
local client = ingx.client { timeout = 300 }

-- What each kind of failure is to the caller of this location: its own
-- request was wrong, or the service behind it failed.
local STATUS = {
  invalid_request = 400, moderation = 422, too_large = 413, rate_limit = 429,
  timeout = 504, canceled = 503, io = 500, callback = 500,
}

local function fail(err)
  ngx.status = STATUS[err.kind] or 502 -- server, network, protocol, auth, ...
  ngx.header["Content-Type"] = "application/json"
  ngx.say(cjson.encode { error = {
    kind = err.kind, message = err.message, param = err.param, status = err.status,
    request_id = err.request_id, maybe_billed = err.maybe_billed,
  } })
end

local args = ngx.req.get_uri_args()
local req = { prompt = type(args.prompt) == "string" and args.prompt or "", images = {} }
for _, k in ipairs { "size", "quality" } do
  if type(args[k]) == "string" then req[k] = args[k] end
end

ngx.req.read_body()
local body = ngx.req.get_body_data()
if body then
  req.images[1] = { bytes = body, filename = "upload" }
else
  req.images[1] = ngx.req.get_body_file() -- a large body waits in a temporary file
end
for path in (os.getenv("IMGEDIT_NGINX_IMAGES") or ""):gmatch("[^,]+") do req.images[#req.images + 1] = path end

local img, err
if #req.images > 0 then
  img, err = client:edit(req) -- yields to nginx until the answer is in
else
  req.images = nil
  img, err = client:generate(req)
end
if not img then return fail(err) end
ngx.header["Content-Type"] = "image/" .. img.format
ngx.header["X-Request-Id"] = img.request_id
ngx.print(img.bytes)
