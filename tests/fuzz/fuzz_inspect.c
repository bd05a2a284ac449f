/* libFuzzer target: header inspection on arbitrary bytes. Inspection must
 * never read out of bounds, loop forever or allocate by a declared size. */
#include <stddef.h>
#include <stdint.h>

#include "../../src/imgedit.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  ie_src s = {data, -1, size};
  ie_info info;
  char why[160];
  if (ie_inspect(&s, &info, why, sizeof why) == IE_OK && info.accepted && (info.width == 0 || info.height == 0))
    __builtin_trap(); /* an accepted image always has a size */
  return 0;
}
