-- What a paid picture gets before it is handed over (jobs.lua's finish):
-- for an edit with a mask, its drift and spill or, with preserve, the
-- composite onto image 1; with decode = "rgba", its pixels; its cost. The
-- picture is paid for, so nothing here may lose it: a failure hands it
-- over as it came, saying why.
local errors = require "imgedit.errors"
local answer = require "imgedit.answer"
local image = require "imgedit.image"
local masks = require "imgedit.mask"
local prices = require "imgedit.prices"

local M = {}

-- hold_one(job, img, warn) -> the Image to hand over: for an edit with a
-- mask, img with its mask_drift and mask_spill, or with preserve the
-- composite (img.raw the service's own). The picture is paid for, so
-- nothing here may lose it: a failure hands img over as it came, with
-- img.preserve_error. Warnings go to warn(msg), for finish to deliver.
local function hold_one(job, img, warn)
  local src, o = job.inpaint, job.opts
  local function failed(why)
    img.preserve_error = why
    warn("the mask's figures" .. (o.preserve and " and preserve" or "") .. " failed: " .. why
      .. (o.preserve and "; the service's picture is kept as it came" or ""))
    return img
  end
  -- Made by a decoder thread already, as a rule (no pixel work here); else,
  -- from image 1 and the mask as they were sent (request.prepare read them
  -- once) and the answer's pixels when the decoder thread made them.
  local made = rawget(img, "_inpaint")
  img._inpaint = nil
  local opts = { feather = o.feather, tolerance = o.drift_tolerance,
    quality = masks._quality(job.fields.output_compression), pixels = o.decode == "rgba" }
  local ok, r, e
  if made then
    ok, r, e = pcall(o.preserve and masks._preserved or masks._compared, img, made, opts)
  else
    ok, r, e = pcall(o.preserve and masks.preserve or masks.compare, img, { bytes = src.base.data },
      { bytes = src.mask.data }, opts)
  end
  if not ok or not r then return failed(ok and e.message or tostring(r)) end
  if o.preserve then
    local bi = src.base.info
    if bi.width * r.height ~= bi.height * r.width then
      warn(string.format("image 1 is %dx%d and the answer %dx%d: preserve stretched image 1 to the answer's shape",
        bi.width, bi.height, r.width, r.height))
    end
    return r
  end
  img.mask_drift, img.mask_spill = r.drift, r.spill
  if o.drift_warning and r.drift > o.drift_warning then
    warn(string.format("the answer changed %.1f%% of the area the mask keeps (mask_drift, over"
      .. " drift_warning = %g%%); preserve = true puts image 1 back there", r.drift * 100, o.drift_warning * 100))
  end
  return img
end

-- hold(job, img) -> img: hold_one for each picture of an edit with a mask,
-- then its warnings through the client's on_warning. One that raises ends
-- the job as kind "callback", the picture in err.image, as any callback's.
local function hold(job, img)
  if not job.inpaint or not img then return img end
  local warnings = {}
  local function warn(msg) warnings[#warnings + 1] = msg end
  img = hold_one(job, img, warn)
  for i, more in ipairs(img.more or {}) do
    if image.is(more) then img.more[i] = hold_one(job, more, warn) end
  end
  for _, msg in ipairs(warnings) do
    local ok, e = pcall(job.client._warn, job.client, msg)
    if not ok and not job.cb_err then
      job.cb_err = errors.new("callback", "on_warning raised an error: " .. tostring(errors.is(e) and e.message or e),
        { callback = "on_warning", cause = e, attempts = job.attempts, retryable = false, maybe_billed = true })
    end
  end
  return img
end

-- picture(job, img) -> the Image to hand over.
function M.picture(job, img)
  img = hold(job, img)
  if job.opts and job.opts.decode == "rgba" then
    answer.pixels(img)
    for _, more in ipairs(img.more or {}) do
      if image.is(more) then answer.pixels(more) end
    end
  end
  if img.cost == nil and job.kind ~= "download" then
    img.cost = prices.cost(job.client, img.model or job.fields.model, img.usage, 1 + #(img.more or {}))
  end
  return img
end

return M
