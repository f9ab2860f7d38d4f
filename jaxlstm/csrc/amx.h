// AMX's bfloat16 tile products for the AVX-512 kernels (include after simd.h, with
// JAXLSTM_AVX512): the step matmuls of `amx` kernels, their sums in tiles until the end.

namespace jaxlstm::avx512 {

// acc[64 n + 16 q + lane] = sum over the segments (a, lda, panel, k) of sum_k a[n * lda + k]
// * W[k][16 q + lane], for n < blocks * height (the tiles' configured height): AMX's
// bfloat16 tile products, the sums in tiles until the end, the panels in tile order
// (PanelOffset). A segment's k is a multiple of 32 (a tile of weights); its rows past the
// caller's may hold anything that is readable (each row of sums depends on its own row of
// a only).
struct Segment {
  const Bf16* a;
  int64_t lda;
  const Bf16* panel;
  int64_t k;
};

// The weights' tile of quarter q for k in [k0, k0 + 32), 16 rows of 64 bytes.
inline const Bf16* WeightTile(const Bf16* panel, int64_t k0, int64_t q) {
  return panel + (k0 / 32 * 4 + q) * 16 * kLanes * 2;
}

// Tiles 0-3 (the sums) = 0.
__attribute__((target("amx-tile"))) inline void ZeroSums() {
  _tile_zero(0);
  _tile_zero(1);
  _tile_zero(2);
  _tile_zero(3);
}

__attribute__((target("avx512f,avx512bw,amx-tile,amx-bf16"))) void AmxProduct(
    int64_t blocks, int64_t height, std::initializer_list<Segment> segments, float* acc) {
  constexpr int64_t kTileRow = kLanes * 2 * sizeof(Bf16), kAccRow = kPanel * sizeof(float);
  int64_t block = 0;
  // Two row blocks at a time, half the columns at a time: tiles 0-3 hold the sums of 2 x 2
  // (16 rows, 16 columns) blocks, 4 and 5 the rows of a, 6 and 7 the weights, each of
  // which serves both row blocks (the weights, which come from the L2 cache, are loaded
  // once per step).
  for (; block + 2 <= blocks; block += 2) {
    for (int64_t half = 0; half < 2; ++half) {
      ZeroSums();
      for (const Segment& g : segments) {
        const Bf16* a = g.a + block * height * g.lda;
        const int64_t stride = g.lda * sizeof(Bf16);
        for (int64_t k = 0; k < g.k; k += 32) {
          const Bf16* w = WeightTile(g.panel, k, 2 * half);
          _tile_loadd(4, a + k, stride);
          _tile_loadd(6, w, kTileRow);
          _tile_dpbf16ps(0, 4, 6);
          _tile_loadd(5, a + height * g.lda + k, stride);
          _tile_dpbf16ps(2, 5, 6);
          _tile_loadd(7, w + 16 * kLanes * 2, kTileRow);
          _tile_dpbf16ps(1, 4, 7);
          _tile_dpbf16ps(3, 5, 7);
        }
      }
      float* c = acc + block * height * kPanel + half * 2 * kLanes;
      _tile_stored(0, c, kAccRow);
      _tile_stored(1, c + kLanes, kAccRow);
      _tile_stored(2, c + height * kPanel, kAccRow);
      _tile_stored(3, c + height * kPanel + kLanes, kAccRow);
    }
  }
  // A last (or only) row block: tiles 0-3 hold its four quarters, 4 its rows of a, 6 and 7
  // the weights in turn.
  for (; block < blocks; ++block) {
    ZeroSums();
    for (const Segment& g : segments) {
      const Bf16* a = g.a + block * height * g.lda;
      for (int64_t k = 0; k < g.k; k += 32) {
        _tile_loadd(4, a + k, g.lda * sizeof(Bf16));
        _tile_loadd(6, WeightTile(g.panel, k, 0), kTileRow);
        _tile_dpbf16ps(0, 4, 6);
        _tile_loadd(7, WeightTile(g.panel, k, 1), kTileRow);
        _tile_dpbf16ps(1, 4, 7);
        _tile_loadd(6, WeightTile(g.panel, k, 2), kTileRow);
        _tile_dpbf16ps(2, 4, 6);
        _tile_loadd(7, WeightTile(g.panel, k, 3), kTileRow);
        _tile_dpbf16ps(3, 4, 7);
      }
    }
    float* c = acc + block * height * kPanel;
    _tile_stored(0, c, kAccRow);
    _tile_stored(1, c + kLanes, kAccRow);
    _tile_stored(2, c + 2 * kLanes, kAccRow);
    _tile_stored(3, c + 3 * kLanes, kAccRow);
  }
}

}  // namespace jaxlstm::avx512
