// AMX's tile registers: their configuration, which every thread loads before it multiplies
// in them and releases after, and whether this process may use them at all. (The tile
// products themselves are in amx.h, for the AVX-512 kernels only.)
#ifndef JAXLSTM_CSRC_TILES_H_
#define JAXLSTM_CSRC_TILES_H_

#include <cstdint>

namespace jaxlstm {

// The tiles' shapes (palette 1: eight tiles of up to 16 rows of 64 bytes). The products
// (AmxProduct) use tiles 0-3 for float32 sums of up to 16 rows by 16 columns, 4 and 5 for
// 32 k of up to 16 rows of the left operand (bfloat16), 6 and 7 for 32 x 16 blocks of the
// weights (16 rows of pairs along k, as the panels hold them).
struct alignas(64) TileConfig {
  uint8_t palette = 1, start_row = 0, reserved[14] = {};
  uint16_t bytes[16] = {};  // per tile: bytes per row
  uint8_t rows[16] = {};

  // For row blocks of `height` (<= 16) rows.
  explicit TileConfig(int64_t height);
};

// Loads the configuration into this thread's tile registers.
void LoadTiles(const TileConfig& tiles);

// Gives this thread's tiles back (their state then costs nothing at context switches).
void ReleaseTiles();

// Whether this process may use AMX's bfloat16 tiles: the CPU has them and Linux grants
// their state (a process asks once; the answer holds for all its threads).
bool AmxGranted();

}  // namespace jaxlstm

#endif  // JAXLSTM_CSRC_TILES_H_
