-- Providers: where a request goes and how it says who it is, per service.
--   apiyi       the seeds' gateway (the default base url), Bearer key
--   openai      api.openai.com, Bearer key (OPENAI_API_KEY as a fallback)
--   azure       {endpoint}/openai/deployments/{deployment}/images/...?api-version=,
--               an api-key header and never Authorization
--   compatible  any other OpenAI-compatible service: /images/..., Bearer key
-- Without `provider`, the base url's host decides; anything else (loopback
-- included) is "compatible" unless the caller says otherwise.
local M = {}

-- Azure's data-plane version for image edits and generations with the GPT
-- image models (the api-version of Microsoft's "how to use image
-- generation models" page, azure-ai-docs articles/ai-foundry/openai/how-to/dall-e.md).
M.AZURE_API_VERSION = "2025-04-01-preview"

M.list = {
  apiyi = { base_url = "https://api.apiyi.com/v1", hosts = { ["api.apiyi.com"] = true } },
  openai = { base_url = "https://api.openai.com/v1", hosts = { ["api.openai.com"] = true }, key_env = "OPENAI_API_KEY" },
  azure = { suffixes = { ".openai.azure.com", ".cognitiveservices.azure.com" }, key_env = "AZURE_OPENAI_API_KEY",
    endpoint_env = "AZURE_OPENAI_ENDPOINT", header = "api-key" },
  compatible = {},
}

local function host_of(url)
  local h = tostring(url):match("^%a[%w+.-]*://([^/?#]+)")
  return h and h:gsub("^.*@", ""):gsub(":%d+$", ""):lower()
end

-- detect(base_url) -> the provider its host belongs to, else "compatible".
function M.detect(base_url)
  local host = host_of(base_url)
  if not host then return "compatible" end
  for name, p in pairs(M.list) do
    if p.hosts and p.hosts[host] then return name end
    for _, s in ipairs(p.suffixes or {}) do
      if host:sub(-#s) == s then return name end
    end
  end
  return "compatible"
end

-- url(client, kind, model) -> where an edit ("edits") or a generation
-- ("generations") goes.
function M.url(c, what, model)
  if c.provider == "azure" then
    return string.format("%s/openai/deployments/%s/images/%s?api-version=%s", c.base_url,
      (c.deployment or model):gsub("[^%w%-_.~]", function(ch) return string.format("%%%02X", ch:byte()) end), what,
      c.api_version)
  end
  return c.base_url .. "/images/" .. what
end

-- auth(client, key) -> the header line that carries the key.
function M.auth(c, key)
  if c.provider == "azure" then return "api-key: " .. key end
  return "Authorization: Bearer " .. key
end

return M
