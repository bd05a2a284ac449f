-- A character sheet: one subject, several poses made in parallel, then one
-- sheet that puts them side by side. Re-run it: finished steps come from the
-- cache and cost nothing. Usage: lua5.4 examples/character_sheet.lua [OUTDIR]
package.path = "examples/?.lua;" .. package.path
local imgedit = require "imgedit"
local common = require "common"
local inputs = require "inputs"

local client, outdir, finish = common.setup("character_sheet")
local p = imgedit.pipeline { client = client, dir = outdir, cache = outdir .. "/.imgedit-cache" }
local subject = inputs.make(outdir).person

local poses = { "standing, arms crossed", "running", "sitting on a crate", "waving" }
local reqs = {}
for i, pose in ipairs(poses) do
  reqs[i] = { prompt = "The character from image 1, full body, " .. pose .. ", plain studio background",
    images = { subject }, size = "1024x1536", quality = "medium" }
end
local shots = assert(p:fan_out("pose", reqs))

local sheet = assert(p:edit("sheet", {
  prompt = "A character sheet: the four poses from images 1 to 4 side by side, labelled, same style",
  images = shots, size = "1536x1024",
}))
print("sheet: " .. sheet.path)
p:report()
finish()
