-- Every exported name is in the reference (docs/api.md) and has editor
-- types (types/imgedit.lua). The names come from the code itself, so a new
-- public function without docs fails here.
local H = require "helpers"
local imgedit = require "imgedit"

describe("reference docs and editor types", function()
  local docs = H.read("docs/api.md")
  local types = H.read("types/imgedit.lua")

  local function public(t)
    local out = {}
    for k, v in pairs(t) do
      if type(k) == "string" and not k:match("^_") and type(v) == "function" then out[#out + 1] = k end
    end
    table.sort(out)
    return out
  end

  local function documented(name)
    assert.truthy(docs:find("`" .. name, 1, true), name .. " is not in docs/api.md")
  end

  it("covers the module's names", function()
    for _, k in ipairs { "pipeline", "mask", "fit" } do local _ = imgedit[k] end -- load the lazy ones
    for k in pairs(imgedit) do
      if type(k) == "string" and k ~= "_VERSION" then documented("imgedit." .. k) end
    end
    for _, k in ipairs(public(imgedit)) do
      assert.truthy(types:find("function imgedit." .. k .. "(", 1, true), "imgedit." .. k .. " has no types")
    end
  end)

  it("covers the client, jobs and images", function()
    local client = require "imgedit.client"
    for _, k in ipairs(public(client.Client)) do
      documented("client:" .. k)
      assert.truthy(types:find("function Client:" .. k .. "(", 1, true), "client:" .. k .. " has no types")
    end
    for _, k in ipairs(public(client.Job)) do
      documented("job:" .. k)
      assert.truthy(types:find("function Job:" .. k .. "(", 1, true), "job:" .. k .. " has no types")
    end
    local img = assert(imgedit.from_bytes(H.png(2, 2)))
    for _, k in ipairs { "save" } do
      assert.is_function(img[k])
      documented("img:" .. k)
      assert.truthy(types:find("function Image:" .. k .. "(", 1, true))
    end
    for k in pairs(img) do documented("img." .. k) end
  end)

  it("covers masks, pipelines and the emulator", function()
    for _, k in ipairs(public(imgedit.mask)) do
      documented("imgedit.mask." .. k)
      assert.truthy(types:find("function mask." .. k .. "(", 1, true), "mask." .. k .. " has no types")
    end
    for _, k in ipairs(public(require("imgedit.pipeline").Pipeline)) do
      documented("p:" .. k)
      assert.truthy(types:find("function Pipeline:" .. k .. "(", 1, true), "p:" .. k .. " has no types")
    end
    local emu = H.emulator()
    local methods = {}
    for k in pairs(getmetatable(emu).methods) do methods[#methods + 1] = k end
    emu:stop()
    assert.is_true(#methods >= 6)
    for _, k in ipairs(methods) do
      documented("emu:" .. k)
      assert.truthy(types:find("function Emulator:" .. k .. "(", 1, true), "emu:" .. k .. " has no types")
    end
  end)

  it("gives every name of the reference editor types, and documents every typed function", function()
    -- the module's functions: each heading `imgedit.x(` has its types, and back
    for name in docs:gmatch("\n### `imgedit%.([%w_]+)%(") do
      assert.truthy(types:find("function imgedit." .. name .. "(", 1, true), "imgedit." .. name .. " has no types")
    end
    for name in types:gmatch("\nfunction imgedit%.([%w_]+)%(") do
      documented("imgedit." .. name)
    end
    for class, prefix in pairs { Client = "client:", Job = "job:", Pipeline = "p:", Emulator = "emu:", Image = "img:" } do
      for name in types:gmatch("\nfunction " .. class .. ":([%w_]+)%(") do documented(prefix .. name) end
    end
  end)
end)
