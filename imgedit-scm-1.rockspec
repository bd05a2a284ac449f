rockspec_format = "3.0"
package = "imgedit"
version = "scm-1"
source = {
  url = "git+https://github.com/imgedit/imgedit.git", -- or a checkout: `luarocks make`
}
description = {
  summary = "Edit and fuse images through OpenAI-compatible image APIs",
  detailed = [[
    A C core (libcurl, stb_image, libwebp, libpng, OpenSSL) with a thin Lua API for the
    image edit and generation endpoints: multipart uploads streamed from disk,
    image checks before sending, structured errors, and a local emulator of the
    service (libmicrohttpd, optional: without it the client alone is built)
    for tests and demos.
  ]],
  license = "MIT",
}
dependencies = {
  "lua >= 5.1",
  "lua-cjson",
  "argparse",
}
external_dependencies = {
  CURL = { library = "curl" }, -- curl.h sits in a multiarch folder on Debian
  STB = { header = "stb/stb_image.h", library = "stb" },
  WEBP = { header = "webp/decode.h", library = "webp" },
  PNG = { header = "png.h", library = "png16" },
  OPENSSL = { header = "openssl/evp.h", library = "crypto" },
  OPENSSL_SSL = { header = "openssl/ssl.h", library = "ssl" },
}
build = {
  type = "make",
  -- LUA is the interpreter of the tree (--lua-version): the Makefile asks it
  -- its version and builds into build/lua5.x, or build/luajit; install
  -- takes the same variables so that it installs that build.
  build_variables = {
    CFLAGS = "$(CFLAGS)",
    LUA = "$(LUA)",
    LUA_INCDIR = "$(LUA_INCDIR)",
  },
  install_variables = {
    LUA = "$(LUA)",
    LUA_INCDIR = "$(LUA_INCDIR)",
    PREFIX = "$(PREFIX)",
    LUA_LMOD = "$(LUADIR)",
    LUA_CMOD = "$(LIBDIR)",
    BINDIR = "$(BINDIR)",
    BIN_PATHS = "", -- LuaRocks wraps the command with its tree's paths
  },
}
