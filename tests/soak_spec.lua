-- The money soak, bounded (about a minute): see tests/soak.lua. `make soak`
-- runs it longer, under ASan and under ThreadSanitizer.
local soak = require "soak"

describe("the money soak", function()
  it("keeps every money promise over a seeded mix of jobs, faults and callers", function()
    local seed = tonumber(os.getenv("IMGEDIT_SOAK_SEED")) or os.time()
    local stats, violations = soak.run { seed = seed, seconds = tonumber(os.getenv("IMGEDIT_SOAK_SECONDS")) or 45 }
    print(soak.summary(stats) .. " (seed " .. seed .. ")")
    assert.is_true(stats.jobs > 20, "the soak ran")
    assert.is_true(stats.delivered > 10, "answers were delivered")
    assert.is_true((stats.shifted or 0) > 0, "an input changed under its uploads")
    assert.are.same({}, violations, "seed " .. seed)
  end)
end)
