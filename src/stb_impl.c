/* stb's implementation, for systems without Debian's libstb (what
 * `pkg-config --libs stb` links on Debian: each header compiled on its own
 * with its IMPLEMENTATION macro and no STBI_* options). Built only with
 * STB_INCDIR (macOS) and by tools/windows/deps.sh; the headers are the
 * system's or the Debian source package's, never copied here. */
#define STB_IMAGE_IMPLEMENTATION
#define STB_IMAGE_WRITE_IMPLEMENTATION
#define STB_IMAGE_RESIZE_IMPLEMENTATION

#include <stb_image.h>
#include <stb_image_resize.h>
#include <stb_image_write.h>
