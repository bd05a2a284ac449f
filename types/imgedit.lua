---@meta imgedit
-- lua-language-server definitions for imgedit's public API. Point your
-- editor's Lua.workspace.library at this folder for completion and type checks.

---@alias imgedit.ErrorKind "invalid_request"|"moderation"|"auth"|"not_found"|"too_large"|"rate_limit"|"server"|"network"|"timeout"|"protocol"|"canceled"|"budget"|"io"|"callback"

---@class imgedit.Error
---@field kind imgedit.ErrorKind
---@field message string
---@field status? integer
---@field code? string
---@field param? string
---@field index? integer
---@field type? string
---@field request_id? string
---@field retryable boolean
---@field maybe_billed? boolean the service may have received and billed the request
---@field url? string where a made picture can still be downloaded (client:download)
---@field retry_after? number seconds the server asked to wait
---@field image? imgedit.Image a paid picture that arrived although the job failed
---@field callback? string for kind "callback": which callback raised
---@field cause? any for kind "callback": what it raised
---@field tls? "unknown_ca"|"host_mismatch"|"expired"|"not_yet_valid"|"revoked"|"untrusted"|"not_tls"|"ca_file"|"handshake"
---@field attempts integer
---@field report? imgedit.MaskReport
---@field reason? "too_large"|"corrupt"|"truncated"|"unsupported"|string why a picture was not decoded

---@class imgedit.Usage
---@field input_tokens integer
---@field output_tokens integer
---@field total_tokens integer

---@class imgedit.Image
---@field bytes string
---@field format "png"|"jpeg"|"webp"
---@field width integer
---@field height integer
---@field sha256 string of the bytes
---@field picture_sha256 string of the picture without the lineage imgedit wrote into it
---@field channels? integer
---@field has_alpha? boolean
---@field usage? imgedit.Usage
---@field url? string
---@field model? string
---@field created? number
---@field request_id? string
---@field revised_prompt? string
---@field cost? {usd: number, basis: "tokens"|"per_image", upper_bound?: boolean} what the answer cost
---@field more? (imgedit.Image|table)[] the answer's other pictures (n > 1): Images, {url=, request_id=}, or errors
---@field filename? string
---@field path? string
---@field step? string
---@field cached? boolean
---@field partial? boolean
---@field partial_index? integer
---@field mask_drift? number edits with a mask: share of the kept area the service changed
---@field mask_spill? number edits with a mask: share of the edit area it left alone
---@field preserved? {feather: integer, scaled: boolean} composited onto image 1 (preserve = true)
---@field raw? imgedit.Image with preserve: the picture as the service sent it
---@field preserve_error? string why the mask's figures or the composite could not be made
---@field buffer? imgedit.Buffer RGBA8, width*height*4 bytes in the decoder's memory: with decode = "rgba"
---@field pixels? string RGBA8, width*height*4 bytes: the buffer's string (made on first use), or after img:rgba()
---@field pixels_error? string with decode = "rgba": why this paid picture could not be decoded
local Image = {}

---The picture as RGBA8 (width*height*4 bytes, rows top to bottom): img.pixels
---when it came decoded (decode = "rgba"), else decoded here, on the calling
---thread, once (kept in img.pixels).
---@param max_pixels? integer default require("imgedit.image").max_pixels
---@param max_bytes? integer default require("imgedit.image").max_decode_bytes
---@return string|nil pixels
---@return integer|imgedit.Error width_or_err
---@return integer|nil height
function Image:rgba(max_pixels, max_bytes) end

---Write the image atomically (temp file, fsync, rename); a name that asks
---for another format (.png, .jpg/.jpeg, .webp) gets the picture converted.
---@param path string
---@param opts? {quality?: integer}
---@return string|nil path
---@return imgedit.Error|nil err
function Image:save(path, opts) end

---@alias imgedit.Source string|imgedit.Image|{bytes: string, filename?: string}|{url: string}|{file_id: string}

---require("imgedit.image"): the bounds of every decode (inputs, answers,
---partials, masks, preserve, fit, conversions on save), to set. A picture
---over either is refused from its header, before any allocation.
---@class imgedit.ImageModule
---@field max_pixels integer pixels the header declares (50,000,000)
---@field max_decode_bytes integer memory the decode takes at its peak, bit depth and channels counted (268,435,456)

---@class imgedit.Progress
---@field phase "upload"|"wait"|"download"
---@field uploaded integer
---@field upload_total integer
---@field downloaded integer
---@field download_total integer
---@field elapsed number
---@field attempt integer

---@class imgedit.RetryInfo
---@field attempt integer
---@field wait number
---@field status? integer
---@field kind imgedit.ErrorKind
---@field error imgedit.Error
---@field phase "api"|"download"

---@class imgedit.Request
---@field prompt string
---@field images? imgedit.Source|imgedit.Source[]
---@field mask? imgedit.Source
---@field body? "multipart"|"json" the JSON edit body (GPT image models); by itself with a url or file id
---@field model? string
---@field size? string
---@field quality? "low"|"medium"|"high"|"auto"
---@field output_format? "png"|"jpeg"|"webp"
---@field output_compression? integer
---@field background? "auto"|"opaque"
---@field response_format? "url"|"b64_json"
---@field stream? boolean
---@field partial_images? integer
---@field timeout? number
---@field connect_timeout? number
---@field idle_timeout? number
---@field max_retries? integer
---@field retry_unanswered? boolean send again a request that may have been billed (sent in full, no answer)
---@field retry_timeouts? boolean older name of retry_unanswered
---@field retry_protocol? boolean
---@field max_retry_after? number
---@field retry_base? number
---@field retry_cap? number
---@field refresh? boolean pipelines: force a new request
---@field preserve? boolean with a mask: keep image 1 exactly wherever the mask keeps
---@field decode? "rgba"|false pictures (partials too) decoded to RGBA8 off the caller's thread: img.pixels
---@field feather? integer preserve's seam, in pixels (4)
---@field drift_tolerance? integer largest channel difference counted as unchanged (30)
---@field drift_warning? number|false warn past this mask_drift (0.10)
---@field on_progress? fun(p: imgedit.Progress)
---@field on_retry? fun(info: imgedit.RetryInfo)
---@field on_partial? fun(img: imgedit.Image, index: integer)
---@field [string] string|number|boolean|function|table|nil any other field of the service

---@class imgedit.ClientOptions
---@field api_key? string
---@field base_url? string
---@field model? string
---@field timeout? number
---@field connect_timeout? number
---@field idle_timeout? number
---@field max_retries? integer
---@field retry_unanswered? boolean send again a request that may have been billed (sent in full, no answer)
---@field retry_timeouts? boolean older name of retry_unanswered
---@field retry_protocol? boolean
---@field max_retry_after? number
---@field retry_base? number
---@field retry_cap? number
---@field max_concurrency? integer
---@field max_response_bytes? integer
---@field max_download_bytes? integer
---@field progress_interval? number
---@field limits? table
---@field on_progress? fun(p: imgedit.Progress)
---@field on_retry? fun(info: imgedit.RetryInfo)
---@field yield? boolean|fun(job: imgedit.Job)
---@field provider? "apiyi"|"openai"|"azure"|"compatible" default: from the base url's host
---@field deployment? string Azure: the deployment (default: the model)
---@field prices? table<string, table|false> model -> {text_in=, image_in=, image_out=} (USD per 1M tokens) or {per_image=}
---@field on_warning? fun(msg: string) once per message: a model near its shutdown, a mask's drift (default: stderr)
---@field preserve? boolean edits with a mask: keep image 1 exactly wherever the mask keeps
---@field decode? "rgba"|false pictures (partials too) decoded to RGBA8 off the caller's thread: img.pixels
---@field feather? integer preserve's seam, in pixels (4)
---@field drift_tolerance? integer largest channel difference counted as unchanged (30)
---@field drift_warning? number|false warn past this mask_drift (0.10)
---@field api_version? string Azure: the api-version (default OPENAI_API_VERSION, else 2025-04-01-preview)
---@field ca_file? string PEM certificate authorities trusted in addition to the system's
---@field ca_path? string a folder of them, hashed by `openssl rehash`
---@field proxy? string http, https, socks4 or socks5 url; "" for none (default: the *_PROXY variables)
---@field allow_http? boolean allow a plain http base url to another machine (the key travels unencrypted)

---@class imgedit.Job
---@field attempts integer
---@field state "queued"|"running"|"waiting"|"done"|"failed"
local Job = {}

---@return boolean
function Job:done() end

---@return imgedit.Image|nil img
---@return imgedit.Error|nil err
function Job:result() end

---@return imgedit.Image|nil img
---@return imgedit.Error|nil err
function Job:wait() end

---@return boolean canceled false when the job had already finished
function Job:cancel() end

---@class imgedit.Client
---@field base_url string
---@field model string
---@field provider "apiyi"|"openai"|"azure"|"compatible"
local Client = {}

---@param req imgedit.Request
---@return imgedit.Image|nil img
---@return imgedit.Error|nil err
function Client:edit(req) end

---@param req imgedit.Request
---@return imgedit.Image|nil img
---@return imgedit.Error|nil err
function Client:generate(req) end

---@param kind "edit"|"generate"|"download"
---@param req imgedit.Request|{url: string, request_id?: string}
---@return imgedit.Job
function Client:submit(kind, req) end

---Fetch a picture the service already made, from its url or from the error
---of a url answer whose download failed (err.url).
---@param url string|imgedit.Error
---@param req? imgedit.Request
---@return imgedit.Image|nil img
---@return imgedit.Error|nil err
function Client:download(url, req) end
---@param model? string default: the client's model
---@return table rules the merged rule table this client checks requests against
function Client:rules(model) end

---Cancel live jobs and free the connections; idempotent. Later calls raise.
function Client:close() end

---@param timeout? number seconds to wait for something to happen; 0 never blocks
---@return integer running
function Client:poll(timeout) end

---A descriptor that is readable whenever poll has something to hand over.
---@return integer|nil fd
---@return imgedit.Error|nil err
function Client:fd() end

---Seconds until poll must run although fd() stayed quiet; nil when nothing waits on a clock.
---@return number|nil
function Client:timeout() end

---cqueues' pollable protocol: the descriptor (raises when it cannot be made).
---@return integer
function Client:pollfd() end

---cqueues' pollable protocol: "r".
---@return string
function Client:events() end

---@param reqs imgedit.Request[]
---@param opts? {kind?: "edit"|"generate"}
---@return (imgedit.Image|imgedit.Error)[]
function Client:map(reqs, opts) end

---Pixels handed over without a copy; #buf is its size in bytes (0 once closed).
---@class imgedit.Buffer
local Buffer = {}

---A light userdata pointing at the bytes, for LuaJIT's FFI.
---@return lightuserdata
function Buffer:ptr() end

---The bytes as a Lua string (a copy).
---@return string
function Buffer:string() end

---Free the memory now; idempotent.
function Buffer:close() end

---@class imgedit.Info
---@field format string
---@field mime string
---@field width? integer
---@field height? integer
---@field channels? integer
---@field has_alpha boolean
---@field bit_depth? integer
---@field interlaced boolean
---@field accepted boolean
---@field bytes integer
---@field lineage? {prompt?: string, model?: string, params: table, step?: string, parents: string[], mask?: string, request_id?: string, v: integer}

---@class imgedit.MaskReport
---@field ok boolean
---@field coverage? number
---@field transparent? integer
---@field opaque? integer
---@field partial? integer
---@field problems string[]
---@field warnings string[]

---@class imgedit.Shape
---@field kind? "rect"|"ellipse"
---@field x integer
---@field y integer
---@field w integer
---@field h integer
---@field keep? boolean

---@class imgedit.MaskModule
local mask = {}

---@param opts {width?: integer, height?: integer, like?: imgedit.Source, x: integer, y: integer, w: integer, h: integer, invert?: boolean}
---@return imgedit.Image|nil
---@return imgedit.Error|nil
function mask.rect(opts) end

---@param opts {width?: integer, height?: integer, like?: imgedit.Source, x: integer, y: integer, w: integer, h: integer, invert?: boolean}
---@return imgedit.Image|nil
---@return imgedit.Error|nil
function mask.ellipse(opts) end

---@param opts {width?: integer, height?: integer, like?: imgedit.Source, shapes: imgedit.Shape[], invert?: boolean}
---@return imgedit.Image|nil
---@return imgedit.Error|nil
function mask.compose(opts) end

---@param src imgedit.Source
---@param opts? {invert?: boolean, threshold?: number, feather?: integer}
---@return imgedit.Image|nil
---@return imgedit.Error|nil
function mask.from_gray(src, opts) end

---@param src imgedit.Source
---@param opts? {invert?: boolean, threshold?: number, feather?: integer}
---@return imgedit.Image|nil
---@return imgedit.Error|nil
function mask.from_alpha(src, opts) end

---@param m imgedit.Source
---@param base? imgedit.Source
---@param opts? {model?: string, limits?: table}
---@return imgedit.MaskReport|nil
---@return imgedit.Error|nil
function mask.check(m, base, opts) end

---How far an answer strayed from image 1 around a mask.
---@param answer imgedit.Source
---@param base imgedit.Source
---@param m imgedit.Source
---@param opts? {tolerance?: integer}
---@return {drift: number, spill: number, keep: integer, edit: integer, drifted: integer, unchanged: integer, width: integer, height: integer, scaled: boolean}|nil
---@return imgedit.Error|nil
function mask.compare(answer, base, m, opts) end

---The answer composited onto image 1: image 1 wherever the mask keeps.
---@param answer imgedit.Source
---@param base imgedit.Source
---@param m imgedit.Source
---@param opts? {feather?: integer, tolerance?: integer, quality?: integer}
---@return imgedit.Image|nil
---@return imgedit.Error|nil
function mask.preserve(answer, base, m, opts) end

---@class imgedit.Report
---@field steps integer
---@field hits integer
---@field requests integer
---@field tokens_in integer
---@field tokens_out integer
---@field tokens integer
---@field seconds number
---@field usd number this run's cost in US dollars (paid steps; cache hits are free)
---@field html? string the contact sheet written (report{html=})
---@field html_error? string why it could not be written
---@field list table[]

---@class imgedit.Pipeline
local Pipeline = {}

---@param name string
---@param req imgedit.Request
---@return imgedit.Image|nil
---@return imgedit.Error|nil
function Pipeline:edit(name, req) end

---@param name string
---@param req imgedit.Request
---@return imgedit.Image|nil
---@return imgedit.Error|nil
function Pipeline:generate(name, req) end

---@param name string
---A descriptor that is readable whenever poll has something to hand over.
---@return integer|nil fd
---@return imgedit.Error|nil err
function Client:fd() end

---Seconds until poll must run although fd() stayed quiet; nil when nothing waits on a clock.
---@return number|nil
function Client:timeout() end

---cqueues' pollable protocol: the descriptor (raises when it cannot be made).
---@return integer
function Client:pollfd() end

---cqueues' pollable protocol: "r".
---@return string
function Client:events() end

---@param reqs imgedit.Request[]
---@param opts? {kind?: "edit"|"generate"}
---@return imgedit.Image[]|nil
---@return imgedit.Error|nil
function Pipeline:fan_out(name, reqs, opts) end

---@param name string
---@param start imgedit.Source
---@param prompts string[]
---@param extra? imgedit.Request
---@return imgedit.Image|nil last
---@return imgedit.Image[]|imgedit.Error all
function Pipeline:iterate(name, start, prompts, extra) end

---@param name string
---@return imgedit.Pipeline
function Pipeline:branch(name) end

---@param opts? {quiet?: boolean, html?: string, title?: string}
---@return imgedit.Report
function Pipeline:report(opts) end

---@class imgedit.BatchEvent
---@field event "done"|"failed"
---@field name string
---@field file? string
---@field tokens? integer
---@field cost? {usd: number}
---@field attempts? integer
---@field request_id? string
---@field error? {kind: string, message: string, maybe_billed?: boolean}
---@field resumed? "file"|"cache"|"url"
---@field maybe_paid_twice? boolean

---@class imgedit.BatchNumbers
---@field total? integer
---@field done integer
---@field failed integer
---@field before integer
---@field running integer
---@field left? integer
---@field requests integer
---@field tokens integer
---@field usd number
---@field rpm number
---@field eta? number
---@field concurrency integer
---@field throttled integer
---@field stopping? boolean

---@class imgedit.BatchOptions
---@field client? imgedit.Client default imgedit.new{max_concurrency = concurrency}
---@field manifest? string a .jsonl or .csv path (one of manifest, jobs, pictures)
---@field jobs? imgedit.Request[] with `name`
---@field pictures? string[] paths, folders or globs, with prompt
---@field prompt? string
---@field dir? string default "out"
---@field defaults? imgedit.Request fields for jobs that do not give them
---@field concurrency? integer
---@field budget? integer|{tokens?: integer, requests?: integer, usd?: number}
---@field shard? string|integer[] "I/N" or {I, N}
---@field cache? string|false
---@field lineage? boolean
---@field retry_maybe_billed? boolean send again the jobs that ended failed with maybe_billed
---@field overwrite? boolean replace files in dir the batch did not make (never its inputs)
---@field on_job? fun(event: imgedit.BatchEvent)
---@field on_tick? fun(numbers: imgedit.BatchNumbers)
---@field tick? number
---@field interrupts? {take: fun(self): integer}
---@field route? "direct"|"provider" the provider's Batch API at half price
---@field poll_interval? number provider route: seconds between polls (default 30)
---@field detach? boolean provider route: create the batches and return
---@field cancel? boolean provider route: cancel running batches, collect what they finished
---@field dry_run? boolean provider route: send nothing, return what would be sent and its price
---@field keep_files? boolean provider route: leave the uploads and batch files at the provider
---@field uploads? string provider route: the memory of uploaded pictures (a path)
---@field max_lines? integer provider route: lines per batch at most (50000)
---@field max_bytes? integer provider route: bytes of input per batch at most (200 MB)

---@class imgedit.BatchReport
---@field totals {jobs: integer, done: integer, failed: integer, not_run: integer}
---@field this_run {done: integer, failed: integer, skipped_done_before: integer, not_sent_maybe_billed: integer, requests: integer, tokens: integer, usd: number, rpm: number, throttled: integer, concurrency: {ceiling: integer, lowest: integer, final: integer}}
---@field stopped? string "interrupted", "detached" or "budget: ..."
---@field route? {calls: integer, uploads: integer, upload_bytes: integer, lines: integer, superseded: integer, pending: string[]}
---@field maybe_paid_twice string[]
---@field jobs table[]
---@field report string
---@field failed_manifest string

---@class imgedit.Emulator
---@field url string ends in /v1
---@field key string
---@field cdn_url string
---@field port integer
local Emulator = {}

---@return table[]
function Emulator:requests() end
---@return {requests: integer, in_flight: integer, max_in_flight: integer, batch_lines_run: integer, batch_lines_billed: integer, batch_usage: table, batch_price: number}
function Emulator:stats() end
---@return table[] the Batch API's batch objects, oldest first (reading them runs the lines due)
function Emulator:batches() end
---@return table[] the Files API's file objects (no content), oldest first
function Emulator:files() end
---@param ... table faults for the next requests, in order
function Emulator:inject(...) end
---@param opts {latency?: number, key?: string, batch_seconds?: number, batch_max_lines?: integer, batch_max_bytes?: integer, time_offset?: number}
function Emulator:configure(opts) end
function Emulator:clear() end
function Emulator:stop() end

---@class imgedit.Rules
---@field providers table<string, table<string, table>> provider -> model -> rule table
---@field sources table<string, string> provider -> where its numbers come from
---@field get fun(provider: string, model: string, limits?: table): table
---@field models fun(provider: string): string[]
---@field describe fun(rules: table): string[][] {name, text} rows for people
---@field today fun(): string

---@class imgedit
---@field version string
---@field _VERSION string
---@field rules imgedit.Rules
---@field defaults {base_url?: string, api_key?: string, provider?: string}
---@field errors table
---@field mask imgedit.MaskModule
local imgedit = {}

---@param opts? imgedit.ClientOptions
---@return imgedit.Client
function imgedit.new(opts) end

---@param path string
---@return imgedit.Image|nil
---@return imgedit.Error|nil
function imgedit.open(path) end

---@param bytes string
---@param filename? string
---@return imgedit.Image|nil
---@return imgedit.Error|nil
function imgedit.from_bytes(bytes, filename) end

---@param src imgedit.Source
---@return imgedit.Info|nil
---@return imgedit.Error|nil
function imgedit.inspect(src) end

---@param src imgedit.Source
---@param opts? {max_edge?: integer, max_bytes?: integer, format?: "png"|"jpeg"|"webp", quality?: integer, mask?: imgedit.Source}
---@return imgedit.Image|nil
---@return imgedit.Image|imgedit.Error|nil
function imgedit.fit(src, opts) end

---@param opts {client?: imgedit.Client, dir?: string, cache?: string|false, budget?: integer|{tokens?: integer, requests?: integer, usd?: number}, on_step?: fun(info: table), quiet?: boolean, lineage?: boolean, overwrite?: boolean}
---@return imgedit.Pipeline
function imgedit.pipeline(opts) end

---@param opts imgedit.BatchOptions
---@return imgedit.BatchReport|nil
---@return imgedit.Error|nil
function imgedit.batch(opts) end

---@param v any
---@return boolean
function imgedit.is_image(v) end

---@param v any
---@return boolean
function imgedit.is_error(v) end

return imgedit
