-- Iterative refinement, as the vendor pages describe: each prompt edits the
-- previous output. Then two alternatives branch off the same intermediate
-- result, under a token budget. Usage: lua5.4 examples/refine.lua [OUTDIR]
package.path = "examples/?.lua;" .. package.path
local imgedit = require "imgedit"
local common = require "common"
local inputs = require "inputs"

local client, outdir, finish = common.setup("refine")
local p = imgedit.pipeline { client = client, dir = outdir, cache = outdir .. "/.imgedit-cache",
  budget = { tokens = 200000 } }
local scene = inputs.make(outdir).scene

local base = assert(p:iterate("round", scene, {
  "Add a small wooden cabin on the hill",
  "Make the cabin's windows glow warmly",
  "Add a thin plume of smoke from the chimney",
}, { size = "1536x1024" }))

-- Two alternatives from the same intermediate result.
local winter = assert(p:branch("winter"):edit("final", { prompt = "Cover everything in fresh snow", images = { base } }))
local autumn = assert(p:branch("autumn"):edit("final", { prompt = "Turn the grass and trees to autumn colours", images = { base } }))
print("winter: " .. winter.path)
print("autumn: " .. autumn.path)
p:report()
finish()
