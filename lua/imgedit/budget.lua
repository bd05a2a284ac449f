-- Budgets of requests, tokens and dollars, as pipelines and batches keep
-- them: whether the steps about to go still fit beside what is spent and
-- what is in flight. The counting is the callers' (they know when a
-- request is paid); the check and its words are here, once.
local prices = require "imgedit.prices"

local M = {}

-- option(v, level) -> the budget option as a table, or nil: a number is
-- {tokens = N}; anything else raises at level.
function M.option(v, level)
  if type(v) == "number" then return { tokens = v } end
  if v ~= nil and type(v) ~= "table" then error("bad option 'budget' (number or table expected)", level + 1) end
  return v
end

-- check(budget, used, items, client [, rate]) -> usd | nil, message
-- budget: {requests=, tokens=, usd=}, each optional; used: the same three,
-- spent plus in flight; items: the steps about to go (name, model,
-- estimate in tokens, parts for the price). usd: their estimated dollars
-- (0 without a budget in usd). rate: the share of the price paid (0.5 at a
-- provider's batch price).
function M.check(budget, used, items, client, rate)
  local name, n, need = items[1].name, #items, 0
  for _, it in ipairs(items) do need = need + it.estimate end
  if budget.requests and used.requests + n > budget.requests then
    return nil, string.format("%s needs %d request%s; %d of the budget's %d are spent or in flight", name, n,
      n == 1 and "" or "s", used.requests, budget.requests)
  end
  if budget.tokens and used.tokens + need > budget.tokens then
    return nil, string.format("%s would need up to %d tokens (estimate); %d of the budget's %d are spent or in flight",
      name, need, used.tokens, budget.tokens)
  end
  local usd = 0
  if budget.usd then
    for _, it in ipairs(items) do
      local u = prices.estimate(client, it.model, it.parts)
      if not u then
        return nil, string.format("%s: no price is known for %s, so a budget in usd cannot be kept;"
          .. " give the client prices = {[%q] = {...}}", it.name, it.model, it.model)
      end
      usd = usd + u * (rate or 1)
    end
    if used.usd + usd > budget.usd then
      return nil, string.format("%s would cost up to $%.4f (estimate); $%.4f of the budget's $%.2f is spent or in"
        .. " flight", name, usd, used.usd, budget.usd)
    end
  end
  return usd
end

return M
