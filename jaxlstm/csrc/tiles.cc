#include "tiles.h"

#include <immintrin.h>
#include <sys/syscall.h>
#include <unistd.h>

namespace jaxlstm {

TileConfig::TileConfig(int64_t height) {
  for (int tile = 0; tile < 8; ++tile) {
    bytes[tile] = 64;
    rows[tile] = tile < 6 ? static_cast<uint8_t>(height) : 16;
  }
}

__attribute__((target("amx-tile"))) void LoadTiles(const TileConfig& tiles) {
  _tile_loadconfig(&tiles);
}

__attribute__((target("amx-tile"))) void ReleaseTiles() { _tile_release(); }

bool AmxGranted() {
  constexpr long kRequestPermission = 0x1023, kTileData = 18;  // ARCH_REQ_XCOMP_PERM
  __builtin_cpu_init();
  static const bool granted = __builtin_cpu_supports("amx-tile") &&
                              __builtin_cpu_supports("amx-bf16") &&
                              syscall(SYS_arch_prctl, kRequestPermission, kTileData) == 0;
  return granted;
}

}  // namespace jaxlstm
