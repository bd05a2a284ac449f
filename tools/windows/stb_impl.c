/*
 * The stb implementation for the Windows build: Debian's libstb.so (what
 * `pkg-config --libs stb` gives on Linux) is each header compiled on its own
 * with <NAME>_IMPLEMENTATION defined and no STBI_* options (see the Makefile
 * of Debian's libstb source package); this file does the same for the three
 * headers imgedit uses, and tools/windows/deps.sh compiles it with mingw into
 * $CACHE/prefix/lib/libstb.a, so `-lstb` works the same on both.
 */
#define STB_IMAGE_IMPLEMENTATION
#define STB_IMAGE_WRITE_IMPLEMENTATION
#define STB_IMAGE_RESIZE_IMPLEMENTATION

#include "stb_image.h"
#include "stb_image_write.h"
#include "stb_image_resize.h"
