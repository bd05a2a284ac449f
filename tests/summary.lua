-- busted output handler: one line per failure as it happens, the file of
-- each spec as it starts, then each skipped test with its reason, and a
-- last line "N passed, N failed, N skipped" that CI reads. Errors count as
-- failures.
return function(options)
  local busted = require "busted"
  local handler = require("busted.outputHandlers.base")()
  local pretty = require "pl.pretty"

  local function message(t)
    local m = t.message
    if m == nil then return "nil error" end
    if type(m) ~= "string" then m = pretty.write(m) end
    return m
  end

  local function report(t, what)
    local where = t.element and t.element.trace and t.element.trace.short_src
    local line = t.element and t.element.trace and t.element.trace.currentline
    io.write(string.format("%s: %s\n  at %s:%s\n  %s\n", what, t.name, tostring(where), tostring(line),
      (message(t):gsub("\n", "\n  "))))
    if options.verbose and t.trace and t.trace.traceback then io.write(t.trace.traceback, "\n") end
    io.flush()
  end

  handler.fileStart = function(file)
    io.write("-- ", file.name, "\n")
    io.flush()
    return nil, true
  end

  handler.testEnd = function(element, parent, status)
    if status == "failure" then
      report(handler.failures[#handler.failures], "FAIL")
    elseif status == "error" then
      report(handler.errors[#handler.errors], "ERROR")
    end
    return nil, true
  end

  handler.error = function(element, parent, msg)
    -- errors outside a test (in setup or loading a file) are failures too
    if element.descriptor ~= "it" then
      io.write("ERROR outside a test: ", tostring(msg), "\n")
    end
    return nil, true
  end

  -- A skip says why where the spec gave a reason (pending("reason") inside
  -- the test); a bare pending("name") has none, and says so, so a count of
  -- skips never hides what was not run.
  local function skipped(t)
    local where = t.element and t.element.trace
    local at = where and (tostring(where.short_src) .. ":" .. tostring(where.currentline)) or "?"
    local reason = t.message ~= nil and message(t) or (at .. ": no reason given")
    io.write(string.format("SKIP: %s\n  %s\n", t.name, (reason:gsub("\n", "\n  "))))
  end

  handler.suiteEnd = function()
    for _, t in ipairs(handler.pendings) do skipped(t) end
    local failed = #handler.failures + #handler.errors
    io.write(string.format("%d passed, %d failed, %d skipped\n", #handler.successes, failed, #handler.pendings))
    io.flush()
    return nil, true
  end

  busted.subscribe({ "file", "start" }, handler.fileStart)
  busted.subscribe({ "test", "end" }, handler.testEnd, { predicate = handler.cancelOnPending })
  busted.subscribe({ "suite", "end" }, handler.suiteEnd)
  busted.subscribe({ "error" }, handler.error)
  busted.subscribe({ "failure" }, handler.error)
  return handler
end
