-- Reading what the service answered: a transfer's result becomes an Image,
-- a url still to download, or a structured error.
local compat = require "imgedit.compat"
local core = require "imgedit.core"
local cjson = require "cjson.safe"
local errors = require "imgedit.errors"
local image = require "imgedit.image"

local M = {}

-- A broken answer: a 2xx one was paid for.
local function protocol(msg, res, key)
  return nil, errors.new("protocol", msg, { status = res.status, request_id = res.request_id,
    maybe_billed = res.status >= 200 and res.status <= 299 or nil }, key)
end
M.protocol = protocol

-- What each failure reason of the C transport means to a caller.
local TRANSPORT = {
  timeout = { "timeout" }, idle = { "timeout" }, too_large = { "protocol" }, read = { "io", false },
  canceled = { "canceled" }, headers = { "protocol" }, protocol = { "protocol" }, redirects = { "protocol" },
  tls = { "network", false }, network = { "network" }, partial = { "protocol" }, lost = { "network" },
  proxy = { "network", false }, forked = { "canceled", false }, changed = { "io", false },
}

-- What a maybe-billed error says of its resending; sent_again() rewrites it
-- when the caller asked for the request to be sent again after all.
local NOT_AGAIN = "so it was not sent again"

-- sent_again(err, tries): the error of a request sent `tries` times as asked.
function M.sent_again(err, tries)
  local a, b = err.message:find(NOT_AGAIN, 1, true)
  if a then
    err.message = err.message:sub(1, a - 1) .. "and it was sent again as asked (" .. tries
      .. " attempts in all, each may be billed)" .. err.message:sub(b + 1)
  end
end

-- A gateway's word that it lost the service's answer: 502 (bad gateway),
-- 504 (gateway timeout) and Cloudflare's 524 (a timeout occurred). After the
-- whole request went through, the service may be making the image.
local GATEWAY = { [502] = true, [504] = true, [524] = true }

-- What failed in a TLS handshake, said for a person (res.tls from the core).
local TLS = {
  unknown_ca = "its certificate is signed by an unknown certificate authority"
    .. " (behind a TLS-inspecting proxy? give its CA with ca_file or ca_path)",
  expired = "its certificate has expired",
  not_yet_valid = "its certificate is not valid yet (is this machine's clock right?)",
  host_mismatch = "its certificate is not for this host name",
  revoked = "its certificate has been revoked",
  untrusted = "its certificate is not trusted",
  ca_file = "the certificate authorities in ca_file or ca_path could not be loaded",
  not_tls = "it does not speak TLS on this port (an https:// url for a plain http server?)",
}

-- A proxy's refusal of the tunnel, by its status.
local PROXY = {
  -- (said without a url: errors redact the user and password of any url)
  [407] = "it wants credentials (give them in the proxy url, as user:password@ before its host)",
  [403] = "it does not allow this host or port",
}

-- "host:port" of a url, for messages: never its user and password.
local function host_of(url)
  local auth = tostring(url or ""):match("^%a[%w+.-]*://([^/?#]+)")
  return auth and auth:gsub("^.*@", "") or "the server"
end

-- Whether the service may have the request, and bill it, although no usable
-- answer came: the whole body went out and no error status came back.
function M.maybe_billed(res)
  return res.sent_all == true and (res.status == 0 or (res.status >= 200 and res.status <= 299))
end

-- transport_error(res, what, max, key [, billable]) -> nil, err
function M.transport_error(res, what, max, key, billable)
  local t = TRANSPORT[res.reason] or TRANSPORT.network
  local msg
  -- A forked child's inherited request is the parent's, answered there.
  local billed = billable and M.maybe_billed(res) and res.reason ~= "canceled" and res.reason ~= "read"
    and res.reason ~= "forked" and res.reason ~= "changed"
  if res.reason == "too_large" then
    msg = string.format("%s is larger than the %d-byte limit (%s)", what == "the request" and "the answer" or what, max,
      what == "the image download" and "max_download_bytes" or "max_response_bytes")
  elseif res.reason == "headers" then
    msg = what .. " sent too many header bytes"
  elseif res.reason == "idle" then
    msg = string.format("%s stalled: no bytes moved while %s", what, res.answered and "receiving" or "sending")
  elseif res.reason == "partial" then
    msg = what .. " ended early: the answer was cut short (" .. res.error .. ")"
  elseif res.reason == "read" then
    msg = "a local file could not be read during the upload: " .. res.error
  elseif res.reason == "changed" then
    -- Stopped before its last chunk: the service never had a whole request.
    msg = string.format("%s changed on disk after it was checked, while it was being sent: the upload was stopped"
      .. " before its end, so the service never got the whole request and nothing was billed; send it again to"
      .. " send the file as it is now", res.file or ("part " .. tostring(res.part)))
  elseif res.reason == "canceled" then
    msg = "canceled"
  elseif res.reason == "forked" then
    msg = what .. " belongs to the parent process of this fork, which gets its answer; nothing of it is sent from"
      .. " here (make a new client in this process)"
  elseif res.reason == "tls" then
    local why = TLS[res.tls] or ("the TLS handshake failed: " .. res.error)
    msg = string.format("%s failed: cannot trust %s over TLS: %s", what, host_of(res.url), why)
  elseif res.reason == "proxy" and res.proxy_status then
    msg = string.format("%s failed: the proxy refused the tunnel to %s with HTTP %d: %s", what, host_of(res.url),
      res.proxy_status, PROXY[res.proxy_status] or res.error)
  elseif res.reason == "proxy" then
    msg = what .. " failed: the proxy could not be reached: " .. res.error
  elseif res.reason == "lost" or (t[1] == "network" and billed and not res.answered) then
    msg = what .. " failed: the connection was lost after the whole request was sent, before any answer"
  else
    msg = what .. " failed: " .. res.error
  end
  if billed then
    msg = msg .. "; the service may have received and billed it, " .. NOT_AGAIN
  end
  local retryable = t[2]
  if billed then retryable = false end
  return nil, errors.new(t[1], msg, {
    status = res.status ~= 0 and res.status or nil, retryable = retryable, sent_all = res.sent_all,
    maybe_billed = billed or nil, request_id = res.request_id, tls = res.tls,
  }, key)
end

-- api(res, max, key, billable [, raw]) -> {status=, json= (or body=, raw), request_id=} | nil, err:
-- an answer of the Files and Batch routes (client:_api). With billable (a
-- batch's creation), a gateway that lost the answer after the whole request
-- went out leaves it maybe made, like an edit.
function M.api(res, max, key, billable, raw)
  if not res.ok then return M.transport_error(res, "the request", max, key, billable) end
  if res.status < 200 or res.status > 299 then
    local err = errors.from_status(res.status, cjson.decode(res.body), res, key)
    if billable and GATEWAY[res.status] and res.sent_all then
      err.maybe_billed, err.retryable = true, false
      err.message = err.message .. "; a gateway lost the answer after the whole request was sent: the service may"
        .. " have done it, " .. NOT_AGAIN
    end
    return nil, err
  end
  local out = { status = res.status, request_id = res.request_id }
  if raw then
    out.body = res.body
  else
    local body = cjson.decode(res.body)
    if type(body) ~= "table" then return protocol("the answer is not JSON", res, key) end
    out.json = body
  end
  return out
end

-- b64(v) -> bytes | nil, message: raw base64 or a data: URL.
function M.b64(v)
  if type(v) ~= "string" then return nil, "b64_json is not a string" end
  if v:sub(1, 5):lower() == "data:" then return core.dataurl_decode(v) end
  return core.b64decode(v)
end

-- The image inside one answer item: bytes, or a url to download.
local function decode_item(item, res, key)
  local b64 = item.b64_json
  if b64 ~= nil and b64 ~= cjson.null then
    if type(b64) ~= "string" then return protocol("b64_json in the answer is not a string", res, key) end
    local bytes, msg = M.b64(b64)
    if not bytes then return protocol("the answer's image data: " .. msg, res, key) end
    return bytes
  end
  local url = item.url
  if type(url) == "string" then return nil, nil, url end
  return protocol("the answer holds neither b64_json nor url", res, key)
end

-- one(bytes, item, meta, res, key) -> Image | nil, err: one picture of an answer.
local function one(bytes, item, meta, url, res, key)
  local revised = item.revised_prompt
  local img, msg = image.from_bytes(bytes, {
    usage = meta.usage, url = url, model = meta.model, created = meta.created,
    request_id = res.request_id, revised_prompt = type(revised) == "string" and revised or nil,
  })
  if not img then return protocol("the answer is not a usable image: " .. msg, res, key) end
  if not (img.format == "png" or img.format == "jpeg" or img.format == "webp") then
    return protocol("the answer is a " .. img.format .. " image, not png, jpeg or webp", res, key)
  end
  return img
end

-- attach(img, pic): the pixels the decoder thread made of img's picture
-- (decode = "rgba"), when pic is that picture: one found in JSON (pic.open)
-- with the same bytes, or a download's whole body. A picture it could not
-- decode gets img.pixels_error instead.
function M.attach(img, pic)
  if not image.is(img) or type(pic) ~= "table" or (pic.open and pic.bytes ~= img.bytes) then return end
  -- an edit with a mask: its figures or composite, made by the decoder (deliver.lua takes them)
  if pic.inpaint then rawset(img, "_inpaint", pic.inpaint) end
  if pic.buffer then
    img.buffer, img.width, img.height = pic.buffer, pic.width, pic.height
  elseif pic.reason ~= "unasked" then -- decoded for the mask's figures alone: no pixels wanted
    img.pixels_error = "cannot decode the picture: " .. tostring(pic.error)
  end
end

-- pixels(img [, pic]): img with its RGBA pixels, for decode = "rgba": the
-- decoder thread's, else (a picture it could not find: an unusual answer,
-- a composite) decoded here, on the caller's thread.
function M.pixels(img, pic)
  M.attach(img, pic)
  if rawget(img, "pixels") or rawget(img, "buffer") or img.pixels_error then return img end
  local ok, err = img:rgba()
  if not ok then img.pixels_error = err.message end
  return img
end

-- image(bytes, res, fields, body, url, key [, pics]) -> Image | nil, err
-- An answer with several pictures (n > 1) paid for all of them: the first is
-- the Image, the others are in img.more, in order, each an Image, or
-- {url=, request_id=} for one to download, or the error that spoiled it.
-- pics: what the decoder thread made of them, in the same order.
function M.image(bytes, res, fields, body, url, key, pics)
  local usage = type(body.usage) == "table" and body.usage or nil
  if usage then -- JSON numbers arrive as floats; token counts are integers
    for k, v in pairs(usage) do
      if type(v) == "number" then usage[k] = compat.tointeger(v) or v end
    end
  end
  local meta = { usage = usage, model = fields.model, created = body.created }
  local img, err = one(bytes, body.data[1], meta, url, res, key)
  if not img then return nil, err end
  if #body.data > 1 then
    img.more = {}
    for i = 2, #body.data do
      local item = body.data[i]
      local more, e, more_url
      if type(item) ~= "table" then
        _, e = protocol("the answer's data[" .. i .. "] is not an object", res, key)
      else
        -- the decoder thread's bytes when it decoded this one (its value spliced out)
        local pic = pics and #pics == #body.data and pics[i]
        if pic and pic.bytes and item.b64_json == "" then
          more = pic.bytes
        else
          more, e, more_url = decode_item(item, res, key)
        end
        if more then more, e = one(more, item, meta, nil, res, key) end
      end
      img.more[i - 1] = more or e or { url = more_url, request_id = res.request_id }
    end
  end
  if pics then
    M.attach(img, pics[1])
    if #pics == #body.data then
      for i, more in ipairs(img.more or {}) do M.attach(more, pics[i + 1]) end
    end
  end
  return img
end

-- without_value(text, open, close) -> the JSON text read without the
-- string value between its quotes at open and close (1-based): the big
-- base64 of a picture, already decoded on its own.
function M.without_value(text, open, close)
  return cjson.decode(text:sub(1, open) .. text:sub(close))
end

-- without_values(text, pics) -> the JSON text read without the values of
-- every picture the decoder thread found (pics, in order), or nil when one
-- of them is not there to splice.
local function without_values(text, pics)
  local parts, from = {}, 1
  for _, pic in ipairs(pics) do
    if not (pic.bytes and pic.open and pic.close and pic.open >= from) then return nil end
    parts[#parts + 1] = text:sub(from, pic.open)
    from = pic.close
  end
  parts[#parts + 1] = text:sub(from)
  return cjson.decode(table.concat(parts))
end

-- read(res, fields, key) -> Image | nil, err | nil, nil, url, body
-- for the answer of an API request.
function M.read(res, fields, max, key)
  if not res.ok then
    local _, err = M.transport_error(res, "the request", max, key, true)
    -- The whole answer may have arrived before the failure: its picture is paid for.
    if res.status >= 200 and res.status <= 299 and #res.body > 0 and res.reason ~= "too_large" then
      local whole = setmetatable({ ok = true }, { __index = res })
      local ok, img = pcall(M.read, whole, fields, max, key)
      if ok and image.is(img) then M.keep(err, img) end
    end
    return nil, err
  end
  if res.status >= 200 and res.status <= 299 then
    -- The fast path: decode the image straight from the body and parse only
    -- the small rest of the JSON; it must show the value where it belongs.
    -- The decoder thread already found and decoded the one picture, when asked.
    -- Several pictures, all decoded there: the JSON without any of them.
    local pics = res.pictures
    if pics and #pics > 1 then
      local rest = without_values(res.body, pics)
      local data = type(rest) == "table" and type(rest.data) == "table" and rest.data
      if data and #data == #pics and type(data[1]) == "table" and data[1].b64_json == "" then
        return M.image(pics[1].bytes, res, fields, rest, type(data[1].url) == "string" and data[1].url or nil, key, pics)
      end
    end
    local pic = res.pictures and #res.pictures == 1 and res.pictures[1]
    local bytes, open, close
    if pic and pic.bytes then
      bytes, open, close = pic.bytes, pic.open, pic.close
    else
      bytes, open, close = core.json_b64(res.body)
    end
    if bytes then
      local rest = M.without_value(res.body, open, close)
      local item = type(rest) == "table" and type(rest.data) == "table" and rest.data[1]
      if type(item) == "table" and item.b64_json == "" then
        return M.image(bytes, res, fields, rest, type(item.url) == "string" and item.url or nil, key, res.pictures)
      end
    end
  end
  local body = cjson.decode(res.body)
  if res.status < 200 or res.status > 299 then
    local err = errors.from_status(res.status, body, res, key)
    if GATEWAY[res.status] and res.sent_all then
      err.maybe_billed, err.retryable = true, false
      err.message = err.message .. "; a gateway lost the answer after the whole request was sent: the service may"
        .. " have received and billed it, " .. NOT_AGAIN
    end
    return nil, err
  end
  if type(body) ~= "table" then return protocol("the answer is not JSON", res, key) end
  if type(body.data) ~= "table" or type(body.data[1]) ~= "table" then
    return protocol("the answer has no data[1] object", res, key)
  end
  local bytes, err, url = decode_item(body.data[1], res, key)
  if err then return nil, err end
  if bytes then
    return M.image(bytes, res, fields, body, type(body.data[1].url) == "string" and body.data[1].url or nil, key,
      res.pictures)
  end
  local scheme = url:match("^(%a[%w+.-]*):")
  if not scheme or (scheme:lower() ~= "http" and scheme:lower() ~= "https") then
    local _, e = protocol("refusing to download the answer's url: scheme '" .. tostring(scheme)
      .. "' is not http or https", res, key)
    e.url = url
    return nil, e
  end
  return nil, nil, url, body
end

-- keep(err, img): a transfer failed after its whole answer arrived: the
-- paid picture goes with the error.
function M.keep(err, img)
  err.image, err.maybe_billed, err.retryable = img, true, false
  err.message = err.message .. "; the whole answer had arrived before that: its picture is in err.image"
  return err
end

-- download(res, ...) -> Image | nil, err, for the url download.
function M.download(res, fields, body, url, max, key)
  if not res.ok then return M.transport_error(res, "the image download", max, key) end
  if res.status ~= 200 then
    return nil, errors.new(res.status >= 500 and "server" or "protocol",
      string.format("the image download answered HTTP %d", res.status), {
        status = res.status, retryable = res.status == 408 or res.status == 429 or res.status >= 500,
      }, key)
  end
  return M.image(res.body, res, fields, body, url, key, res.pictures)
end

return M
