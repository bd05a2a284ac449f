-- Streamed answers: server-sent events become partial images (handed to
-- on_partial as they come) and, at the end, the completed picture or the
-- reason there is none.
local compat = require "imgedit.compat"
local cjson = require "cjson.safe"
local errors = require "imgedit.errors"
local image = require "imgedit.image"
local answer = require "imgedit.answer"

local M = {}

-- drain(job, events, key, on_partial): take the events that arrived.
-- on_partial(img, index) returns false once the job must stop (it was
-- canceled or ended from inside the callback); the rest is then dropped.
function M.drain(job, events, key, on_partial)
  for _, ev in ipairs(events) do
    -- With decode = "rgba" the decoder thread found the picture: the JSON
    -- is read without its big string, which must have sat at b64_json.
    local pic = ev.pictures and #ev.pictures == 1 and ev.pictures[1]
    local data
    if pic and pic.bytes then
      data = answer.without_value(ev.data, pic.open, pic.close)
      if type(data) ~= "table" or data.b64_json ~= "" then pic, data = nil, nil end
    else
      pic = nil
    end
    data = data or cjson.decode(ev.data)
    local typ = type(data) == "table" and type(data.type) == "string" and data.type or ev.event
    if type(data) ~= "table" then
      job.stream_err = job.stream_err or errors.new("protocol", "a stream event is not JSON", nil, key)
    elseif typ == "error" or ev.event == "error" then
      local e = type(data.error) == "table" and data.error or data
      local code, etype = type(e.code) == "string" and e.code or nil, type(e.type) == "string" and e.type or nil
      local moderated = code == "moderation_blocked" or etype == "image_generation_user_error"
      job.stream_err = errors.new(moderated and "moderation" or "server",
        "the stream reported an error: " .. tostring(type(e.message) == "string" and e.message or "no message"),
        { code = code, type = etype, retryable = false }, key)
    elseif typ:match("partial_image$") then
      local bytes, msg
      if pic then bytes = pic.bytes else bytes, msg = answer.b64(data.b64_json) end
      local img = bytes and image.from_bytes(bytes, { partial = true, model = job.fields.model })
      if img and job.opts and job.opts.decode == "rgba" then answer.pixels(img, pic) end
      if not img then
        job.stream_err = job.stream_err or errors.new("protocol", "a partial image is not usable: " .. tostring(msg),
          nil, key)
      else
        local index = compat.tointeger(data.partial_image_index) or job.partials
        img.partial_index = index
        job.partials = job.partials + 1
        if not on_partial(img, index) then return end
      end
    elseif typ:match("completed$") then
      job.completed, job.completed_pic = data, pic
    end
  end
end

-- result(job, res, max, key) -> Image | nil, err: the end of a streamed answer.
function M.result(job, res, max, key)
  if job.stream_err then
    job.stream_err.request_id = job.stream_err.request_id or res.request_id
    if job.partials > 0 then job.stream_err.maybe_billed = true end
    return nil, job.stream_err
  end
  if not res.ok then
    local _, err = answer.transport_error(res, "the stream", max, key, true)
    if job.completed then -- the completed event arrived before the failure: the picture is whole
      local img = M.completed(job, res, key)
      if image.is(img) then return nil, answer.keep(err, img) end
    end
    if (res.reason == "partial" or res.reason == "network") and res.answered then
      err.kind = "network"
      err.message = "the stream was cut off before its completed event: " .. res.error
      -- The service answered, so it has the request: it is under way and billed.
      err.maybe_billed, err.retryable = true, false
    end
    if job.partials > 0 then
      err.message = string.format("%s (after %d partial image%s)", err.message, job.partials,
        job.partials == 1 and "" or "s")
      err.maybe_billed, err.retryable = true, false
    end
    return nil, err
  end
  if not job.completed then
    return nil, errors.new("protocol", "the stream ended without a completed event", { status = res.status,
      request_id = res.request_id, maybe_billed = true }, key)
  end
  return M.completed(job, res, key)
end

-- completed(job, res, key) -> Image | nil, err: the picture of the stream's completed event.
function M.completed(job, res, key)
  local done, pic = job.completed, job.completed_pic
  local bytes, msg
  if pic and pic.bytes then bytes = pic.bytes else bytes, msg = answer.b64(done.b64_json) end
  if not bytes then
    return nil, errors.new("protocol", "the completed image: " .. tostring(msg), { request_id = res.request_id,
      maybe_billed = true }, key)
  end
  return answer.image(bytes, res, job.fields, { usage = done.usage, created = done.created_at, data = { done } }, nil,
    key, pic and { pic })
end

return M
