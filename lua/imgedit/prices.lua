-- Prices: what a picture cost in US dollars, from the answer's token usage
-- or per image where that is how a model is billed. Every number's source
-- is quoted in docs/sources/prices.md; a client's `prices` option overrides
-- or adds models (`prices = {["my-model"] = {per_image = 0.02}}`).
local M = {}

-- USD per 1M tokens: text_in, image_in, image_out; or per_image.
local GPT_IMAGE_2 = { text_in = 5.00, image_in = 8.00, image_out = 30.00 } -- litellm #26865, OpenAI pricing
local GPT_IMAGE_15 = { text_in = 5.00, image_in = 8.00, image_out = 32.00 } -- litellm #18088, llm-prices #41
local OPENAI = {
  ["gpt-image-2"] = GPT_IMAGE_2,
  ["gpt-image-2-2026-04-21"] = GPT_IMAGE_2,
  ["gpt-image-1.5"] = GPT_IMAGE_15,
  ["gpt-image-1.5-2025-12-16"] = GPT_IMAGE_15,
  ["chatgpt-image-latest"] = GPT_IMAGE_15, -- unconfirmed: listed at gpt-image-1.5's rates
  ["gpt-image-1"] = { text_in = 5.00, image_in = 10.00, image_out = 40.00 }, -- OpenAI's gpt-image-1 page (ja-JP)
  ["gpt-image-1-mini"] = { text_in = 2.00, image_in = 2.50, image_out = 8.00 }, -- OpenAI's gpt-image-1-mini page (de-DE)
}

M.tables = {
  openai = OPENAI,
  azure = OPENAI, -- "Azure uses same rates" (litellm #18347); unconfirmed beyond gpt-image-1.5
  apiyi = {
    ["gpt-image-2"] = GPT_IMAGE_2, -- "the same as OpenAI's official price"
    ["gpt-image-2-all"] = { per_image = 0.03 }, -- "$0.03 / 张" (per image), one image per call
  },
  compatible = {},
}

local function num(v) return type(v) == "number" and v or 0 end

-- price(client, model) -> the price table for model, or nil
function M.price(c, model)
  local own = c.prices and c.prices[model]
  if own ~= nil then return own or nil end -- prices = {[m] = false}: not priced
  return (M.tables[c.provider] or {})[model]
end

-- cost(client, model, usage, pictures) -> {usd=, basis=, upper_bound=} | nil
-- for one answer: `usage` as it came (it covers every picture of it).
function M.cost(c, model, usage, pictures)
  local p = M.price(c, model)
  if not p then return nil end
  if p.per_image then
    return { usd = p.per_image * (pictures or 1), basis = "per_image" }
  end
  if type(usage) ~= "table" then return nil end
  local d = type(usage.input_tokens_details) == "table" and usage.input_tokens_details or nil
  local usd, upper
  if d then
    usd = num(d.text_tokens) * num(p.text_in) + num(d.image_tokens) * num(p.image_in)
  else
    -- No breakdown: every input token at the dearer image rate, an upper bound.
    usd, upper = num(usage.input_tokens) * math.max(num(p.text_in), num(p.image_in)), true
  end
  usd = (usd + num(usage.output_tokens) * num(p.image_out)) / 1e6
  return { usd = usd, basis = "tokens", upper_bound = upper }
end

-- estimate(client, model, tokens) -> the most a request could cost: tokens
-- is {text, image, output} (each kind at its own rate) or a total (all at
-- the dearest rate); nil when the model has no price.
function M.estimate(c, model, tokens)
  local p = M.price(c, model)
  if not p then return nil end
  if p.per_image then return p.per_image end
  if type(tokens) == "table" then
    return (num(tokens[1]) * num(p.text_in) + num(tokens[2]) * num(p.image_in) + num(tokens[3]) * num(p.image_out)) / 1e6
  end
  return tokens * math.max(num(p.image_out), num(p.image_in), num(p.text_in)) / 1e6
end

-- check(prices) -> true | false, what is wrong: a client's own table.
local RATES = { text_in = true, image_in = true, image_out = true }
function M.check(t)
  if type(t) ~= "table" then return false, "a table of model -> rates" end
  for model, p in pairs(t) do
    if type(model) ~= "string" then return false, "a table of model -> rates (model names as keys)" end
    if p ~= false then
      if type(p) ~= "table" then return false, model .. ": a rate table or false" end
      for k, v in pairs(p) do
        if not (RATES[k] or k == "per_image") then
          return false, string.format("%s: unknown rate '%s' (text_in, image_in, image_out or per_image)", model,
            tostring(k))
        end
        if type(v) ~= "number" or v < 0 or v ~= v then return false, model .. "." .. k .. ": a number >= 0" end
      end
      if p.per_image == nil then
        for k in pairs(RATES) do
          if p[k] == nil then return false, model .. ": needs text_in, image_in and image_out (or per_image)" end
        end
      elseif next(p, nil) ~= "per_image" or next(p, "per_image") ~= nil then
        return false, model .. ": per_image alone, or the three token rates"
      end
    end
  end
  return true
end

return M
