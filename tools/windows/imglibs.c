/*
 * Smoke test for the Windows image libraries that tools/windows/deps.sh
 * builds (libpng, libwebp, stb); run under wine by tools/windows/check.sh.
 * A 4x4 RGBA picture goes through each codec and must come back the same
 * (lossless WebP), so a DLL that loads but does not work is caught here.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <png.h>
#include <webp/decode.h>
#include <webp/encode.h>
#include <stb_image.h>
#include <stb_image_resize.h>
#include <stb_image_write.h>

#define W 4
#define H 4

/* stbi_write_png_to_func appends here. */
struct buf {
  unsigned char *p;
  size_t n;
};

static void put(void *ctx, void *data, int size)
{
  struct buf *b = ctx;
  unsigned char *p = realloc(b->p, b->n + (size_t)size);
  if (!p)
    return;
  memcpy(p + b->n, data, (size_t)size);
  b->p = p;
  b->n += (size_t)size;
}

int main(void)
{
  unsigned char px[W * H * 4], back[W * H * 4], half[2 * 2 * 4];
  png_image img;
  png_alloc_size_t pngsize = 0;
  unsigned char *png, *webp = NULL, *dec, *st;
  size_t webpsize;
  int i, w, h, c;
  struct buf sb = {NULL, 0};

  for (i = 0; i < W * H * 4; i++)
    px[i] = (unsigned char)(i * 37);

  /* libpng: write to memory, read it back. */
  memset(&img, 0, sizeof img);
  img.version = PNG_IMAGE_VERSION;
  img.width = W;
  img.height = H;
  img.format = PNG_FORMAT_RGBA;
  if (!png_image_write_to_memory(&img, NULL, &pngsize, 0, px, 0, NULL)) {
    fprintf(stderr, "libpng: %s\n", img.message);
    return 1;
  }
  png = malloc(pngsize);
  if (!png || !png_image_write_to_memory(&img, png, &pngsize, 0, px, 0, NULL)) {
    fprintf(stderr, "libpng: %s\n", img.message);
    return 1;
  }
  memset(&img, 0, sizeof img);
  img.version = PNG_IMAGE_VERSION;
  if (!png_image_begin_read_from_memory(&img, png, pngsize)) {
    fprintf(stderr, "libpng: %s\n", img.message);
    return 1;
  }
  img.format = PNG_FORMAT_RGBA;
  if (!png_image_finish_read(&img, NULL, back, 0, NULL) || memcmp(px, back, sizeof px)) {
    fprintf(stderr, "libpng: round trip differs\n");
    return 1;
  }

  /* stb_image reads libpng's output; stb_image_write and resize work. */
  st = stbi_load_from_memory(png, (int)pngsize, &w, &h, &c, 4);
  if (!st || w != W || h != H || memcmp(st, px, sizeof px)) {
    fprintf(stderr, "stb_image: %s\n", st ? "differs" : stbi_failure_reason());
    return 1;
  }
  stbi_image_free(st);
  if (!stbi_write_png_to_func(put, &sb, W, H, 4, px, W * 4) || !sb.n ||
      !stbir_resize_uint8(px, W, H, 0, half, 2, 2, 0, 4)) {
    fprintf(stderr, "stb_image_write or stb_image_resize failed\n");
    return 1;
  }

  /* libwebp: lossless encode, decode. */
  webpsize = WebPEncodeLosslessRGBA(px, W, H, W * 4, &webp);
  if (!webpsize) {
    fprintf(stderr, "libwebp: encode failed\n");
    return 1;
  }
  dec = WebPDecodeRGBA(webp, webpsize, &w, &h);
  if (!dec || w != W || h != H || memcmp(dec, px, sizeof px)) {
    fprintf(stderr, "libwebp: round trip differs\n");
    return 1;
  }
  WebPFree(dec);
  WebPFree(webp);
  free(png);
  free(sb.p);

  printf("libpng %s, libwebp %d.%d.%d, stb: ok\n", png_get_libpng_ver(NULL),
         WebPGetDecoderVersion() >> 16, (WebPGetDecoderVersion() >> 8) & 0xff,
         WebPGetDecoderVersion() & 0xff);
  return 0;
}
