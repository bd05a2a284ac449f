-- A conservative token estimate for a request, used by pipeline budgets to
-- refuse a request before it is sent. It errs high on purpose:
--   text    ceil(bytes of the prompt / 3)          (about 4 bytes a token in English)
--   image   85 + 170 * tiles for each input image, where the image is first
--           scaled to fit 2048x2048, then so its short side is at most 768,
--           and cut into 512x512 tiles (the vendor's vision rule for detail)
--   output  the vendor's table for a 1024x1024 answer, low 272, medium 1056,
--           high 4160 (auto counts as high), scaled by the answer's pixels;
--           size auto counts as 1536x1024
local M = {}

local OUT = { low = 272, medium = 1056, high = 4160, auto = 4160 }

function M.image_tokens(w, h)
  if not w or not h or w <= 0 or h <= 0 then return 85 + 170 * 16 end
  local s = math.min(1, 2048 / math.max(w, h))
  w, h = w * s, h * s
  s = math.min(1, 768 / math.min(w, h))
  w, h = w * s, h * s
  return 85 + 170 * math.ceil(w / 512) * math.ceil(h / 512)
end

function M.output_tokens(size, quality)
  local w, h = tostring(size or "auto"):match("^(%d+)x(%d+)$")
  w, h = tonumber(w) or 1536, tonumber(h) or 1024
  return math.ceil((OUT[quality or "auto"] or OUT.high) * w * h / (1024 * 1024))
end

-- parts(prompt, infos, size, quality) -> text, image, output tokens
function M.parts(prompt, infos, size, quality)
  local img = 0
  for _, i in ipairs(infos or {}) do img = img + M.image_tokens(i.width, i.height) end
  return math.ceil(#(prompt or "") / 3), img, M.output_tokens(size, quality)
end

-- estimate(prompt, infos, size, quality) -> tokens; infos are {width=, height=}
function M.estimate(prompt, infos, size, quality)
  local text, img, out = M.parts(prompt, infos, size, quality)
  return text + img + out
end

return M
