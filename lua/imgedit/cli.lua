-- The `imgedit` command line: its parser and its table of commands, each
-- in a module of its own (cli_edit, cli_look, cli_run, cli_batch; what
-- they share is cli_common). bin/imgedit calls main(args) and exits with
-- its result, so the commands can be tested from Lua as well as the shell.
local argparse = require "argparse"
local C = require "imgedit.cli_common"

local M = {}

M.EXIT, M.EXIT_OF_KIND, M.json_out = C.EXIT, C.EXIT_OF_KIND, C.json_out

local EPILOG = [[
Environment: IMGEDIT_API_KEY (the key), IMGEDIT_BASE_URL (default https://api.apiyi.com/v1),
IMGEDIT_PROVIDER (apiyi, openai, azure or compatible; default: from the base url's host);
OPENAI_API_KEY, AZURE_OPENAI_API_KEY and AZURE_OPENAI_ENDPOINT for those providers.
Exit codes: 0 success, 1 other failure, 2 usage error, 3 invalid input (a file, a mask,
a rule of the service, an output that exists or cannot be written), 4 auth, 5 rate
limit or budget, 6 server, network or a broken answer, 7 timeout, 8 the picture was
paid for but could not be written to the output: it was saved elsewhere (the path
is printed).]]

-- ---- the parser ----

local function build()
  local p = argparse("imgedit", "Edit and fuse images through OpenAI-compatible image APIs.")
    :epilog(EPILOG)
  p:command_target("command")
  p:flag("--version", "Show the version."):action(function()
    print(require("imgedit")._VERSION)
    os.exit(0)
  end)

  -- The request's fields and the client's settings: edit, generate and batch.
  local function service_options(cmd)
    cmd:option("--model", "Model name (default gpt-image-2).")
    cmd:option("--size", "auto or WIDTHxHEIGHT.")
    cmd:option("--quality", "low, medium, high or auto.")
    cmd:option("--format", "Output format: png, jpeg or webp.")
    cmd:option("--compression", "Output compression 0-100, for jpeg and webp.")
    cmd:option("--background", "auto, opaque, or transparent where the model allows it (imgedit rules).")
    cmd:option("--response-format", "url or b64_json (gpt-image-2-all).")
    cmd:option("--timeout", "Seconds for one attempt (default 600).")
    cmd:option("--retries", "Retries on 429, 5xx and dropped connections (default 2).")
    cmd:option("--provider", "apiyi, openai, azure or compatible (default: from the base url's host).")
    cmd:option("--deployment", "Azure: the deployment's name (default: the model).")
    cmd:option("--ca-file", "PEM file of certificate authorities to trust, besides the system's.")
    cmd:option("--ca-path", "Folder of certificate authorities (hashed by openssl rehash), besides the system's.")
    cmd:option("--proxy", "Proxy URL (http, https, socks4, socks5, socks5h); default: HTTPS_PROXY and NO_PROXY.")
    cmd:flag("--allow-http", "Allow a plain http base url to another machine (the key then travels unencrypted).")
  end

  local function request_options(cmd)
    cmd:option("-p --prompt", "What to do."):count(1)
    cmd:option("-o --output", "Where to write the image."):count(1)
    service_options(cmd)
    cmd:flag("--stream", "Stream the answer (gpt-image-2): partial images as they form.")
    cmd:option("--partials", "With --stream: how many partial images, 0-3; each is written to OUT.partial-N.EXT.")
    cmd:flag("-f --force", "Overwrite the output if it exists.")
    cmd:flag("-q --quiet", "No progress display.")
    cmd:flag("-v --verbose", "Show the request (never the key) and each retry on stderr.")
    cmd:flag("--json", "Print the result's metadata as JSON on stdout.")
    cmd:flag("--no-lineage", "Do not write how the picture was made (prompt, model, inputs' hashes) into it.")
  end

  local edit = p:command("edit", "Edit or fuse images."):epilog(EPILOG)
  request_options(edit)
  edit:option("-i --image", "An input image; repeat it for more (the order is image 1, 2, ...)."):count("1+")
  edit:option("--mask", "A PNG mask with alpha (alpha 0 = edit here), the size of the first image.")
  edit:flag("--preserve", "With --mask: keep image 1 exactly wherever the mask keeps (the service may redraw"
    .. " it all); the service's pixels where it edits, a seam of --feather pixels between.")
  edit:option("--feather", "With --preserve: the seam's width in pixels, 0-256 (default 4).")
  edit:option("--drift-warning", "With --mask: warn when the answer changed more than this percentage of the"
    .. " kept area (default 10; 100 never warns).")

  local gen = p:command("generate", "Make an image from text."):epilog(EPILOG)
  request_options(gen)

  local run = p:command("run", "Run a pipeline script with the library loaded (as the global imgedit).")
    :epilog(EPILOG)
  run:argument("script", "The Lua script.")
  run:argument("args", "Arguments for the script (its arg table)."):args("*")
  run:flag("--emulate", "Run against a local emulator instead of the service.")
  run:flag("--watch", "Run again each time the script or a step's input file is saved; writes each pipeline's"
    .. " contact sheet (DIR/index.html).")
  run:option("--runs", "With --watch: stop after this many runs (default: until interrupted).")

  local insp = p:command("inspect", "Format, size and alpha of image files, and whether each is acceptable.")
    :epilog(EPILOG)
  insp:argument("files", "Image files."):args("+")
  insp:flag("--json", "Print JSON.")

  local mask = p:command("mask", "Make a mask: alpha 0 where the edit goes."):epilog(EPILOG)
  mask:option("--rect", "X,Y,W,H: open a rectangle for editing (repeatable)."):count("*")
  mask:option("--ellipse", "X,Y,W,H: open the ellipse in that box (repeatable)."):count("*")
  mask:option("--keep", "X,Y,W,H: keep a rectangle after the shapes above (repeatable)."):count("*")
  mask:option("--from-gray", "A black-and-white picture: white marks the area to edit.")
  mask:option("--from-alpha", "A picture whose transparent part marks the area to edit.")
  mask:option("--threshold", "With --from-gray: 0..1, hard edge at this grey level.")
  mask:option("--feather", "Soften the edge by this many pixels.")
  mask:flag("--invert", "Swap the areas to edit and to keep.")
  mask:option("--like", "A base image: the mask takes its size.")
  mask:option("--size", "WIDTHxHEIGHT, when there is no --like.")
  mask:option("-o --output", "Where to write the mask (PNG)."):count(1)
  mask:flag("-f --force", "Overwrite the output if it exists.")
  mask:flag("--json", "Print the mask's check report as JSON.")

  local report = p:command("report", "Write a pipeline folder's contact sheet: one HTML page of every step.")
  report:argument("dir", "The pipeline's folder (its steps' .json files).")
  report:option("-o --output", "Where to write the page (default DIR/index.html).")
  report:option("--title", "The page's title (default: the folder's name).")
  report:flag("-f --force", "Replace the output even if it is not a contact sheet.")
  report:flag("--json", "Print JSON.")

  local rules = p:command("rules", "What a provider and model accept: the limits imgedit checks before sending.")
    :epilog("Provider by default: IMGEDIT_PROVIDER, else from IMGEDIT_BASE_URL's host, else apiyi.")
  rules:option("--provider", "apiyi, openai, azure or compatible.")
  rules:option("--model", "One model's rules; without it, the provider's models.")
  rules:flag("--json", "Print JSON.")

  local batch = p:command("batch", "Run the same kind of edit over many pictures: a manifest or --prompt over"
    .. " pictures, at the service's pace, resumable."):epilog(EPILOG)
  require("imgedit.cli_batch").options(batch)
  service_options(batch)

  local emu = p:command("emulate", "Serve the local emulator until interrupted; prints its url and key.")
    :epilog(EPILOG)
  emu:option("--port", "Port on 127.0.0.1 (default: any free one).", "0")
  emu:option("--latency", "Seconds each answer takes.", "0")
  emu:option("--batch-seconds", "Seconds a Batch API batch takes to complete (default 2).")
  emu:flag("--sink", "Benchmark mode: discard uploads unread and answer a fixed small image at once.")
  emu:option("--provider", "Play this provider: apiyi (default), openai, azure or compatible.")
  return p
end

-- ---- helpers ----

local function cmd_batch(a)
  return require("imgedit.cli_batch").run(a, { fail_err = C.fail_err, number_opt = C.number_opt, json_out = C.json_out,
    EXIT = C.EXIT, EMULATE_PORT = C.EMULATE_PORT })
end

-- Each command, in its module: loaded when it runs.
local function lazy(mod, fn) return function(a) return require(mod)[fn](a) end end
local COMMANDS = { batch = cmd_batch, edit = lazy("imgedit.cli_edit", "run"), generate = lazy("imgedit.cli_edit", "run"),
  inspect = lazy("imgedit.cli_look", "inspect"), mask = lazy("imgedit.cli_look", "mask"),
  report = lazy("imgedit.cli_look", "report"), rules = lazy("imgedit.cli_look", "rules"),
  run = lazy("imgedit.cli_run", "run"), emulate = lazy("imgedit.cli_run", "emulate") }

-- main(args) -> exit code
-- On Windows the interpreter's arguments come in the ANSI code page, where
-- a file name outside it is lost: the last #args of the wide command line
-- are the same arguments, whole, in UTF-8.
local function utf8_args(args)
  local all = require("imgedit.core").argv()
  if not all or #all < #args then return args end
  local out = {}
  for i = 1, #args do out[i] = all[#all - #args + i] end
  return out
end

function M.main(args)
  args = utf8_args(args)
  local parser = build()
  C.json_mode = false
  for _, v in ipairs(args) do
    if v == "--json" then C.json_mode = true end
  end
  local ok, a = parser:pparse(args)
  if not ok then
    C.stderr(parser:get_usage(), "\n")
    return C.fail(2, a)
  end
  local rok, code = pcall(COMMANDS[a.command], a)
  if rok then return code end
  if type(code) == "table" and code.usage then return C.fail(2, code.usage) end
  error(code, 0)
end

return M
