-- One edit with five images and a mask, streamed from disk: the process
-- that `make bench` measures (CPU and peak RSS) against curl and the SDK.
-- Usage: lua5.4 bench/upload.lua URL KEY IMAGE1..IMAGE5 MASK
local imgedit = require "imgedit"
local url, key = arg[1], arg[2]
local images = { arg[3], arg[4], arg[5], arg[6], arg[7] }
local client = imgedit.new { base_url = url, api_key = key }
local img, err = client:edit { prompt = "Fuse the five images", images = images, mask = arg[8] }
if not img then error(tostring(err)) end
