// The kernels' data layouts, the same for every instruction set: the rows of the layer's
// arrays (Shape), the AMX products' row blocks, and the packed weight panels.
#ifndef JAXLSTM_CSRC_LAYOUT_H_
#define JAXLSTM_CSRC_LAYOUT_H_

#include <algorithm>
#include <cstdint>

namespace jaxlstm {

constexpr int kLanes = 16;          // float32 values of one vector (two registers on AVX2)
constexpr int kPanel = 4 * kLanes;  // columns of one packed weight panel

// A bfloat16 value's bits (the matmul operands' other dtype).
struct Bf16 {
  uint16_t bits;
};

// Row-major arrays: L steps in time order, N batch, D directions, H hidden, G = 4H;
// direction 1 runs from its sequence's end, t = L - 1 down to 0.
struct Shape {
  int64_t L, N, D, H, I;  // I: input size
  int64_t G() const { return 4 * H; }
  // Time step of direction d at scan step `step` (the reverse direction runs backwards).
  int64_t Time(int64_t d, int64_t step) const { return d == 0 ? step : L - 1 - step; }
  // Row of (time t, batch n, direction d) in the (L, N, D, ...) arrays.
  int64_t Row(int64_t t, int64_t n, int64_t d) const { return (t * N + n) * D + d; }
  // Row of (time t, batch n) in a direction's (L, N, ...) residuals.
  int64_t Residual(int64_t t, int64_t n) const { return t * N + n; }
};

// The rows of the AMX products: N rows as `blocks` blocks of `height` <= 16 rows (the
// operands' rows padded to blocks * height).
struct RowBlocks {
  int64_t height, blocks;
  explicit RowBlocks(int64_t n)
      : height(std::min<int64_t>(16, n)), blocks((n + height - 1) / height) {}
  int64_t Rows() const { return height * blocks; }
};

// The matmul operands: float32, or bfloat16 multiplied in pairs along k. A panel row holds
// kPack<M> values of k for each of its 64 columns, adjacent:
// panel[(k / kPack) * 64 * kPack + col * kPack + k % kPack] (row after row; AMX: see
// PanelOffset).
template <typename M>
constexpr int64_t kPack = sizeof(float) / sizeof(M);

// k rounded up to whole packed rows.
template <typename M>
constexpr int64_t Padded(int64_t k) {
  return (k + kPack<M> - 1) / kPack<M> * kPack<M>;
}

// Where 16 columns (quarter q of 64) of packed row p start in a panel: row after row, or
// for AMX in tile order (tiles of 16 packed rows by 16 columns, 1 KB each, the four
// quarters of 16 packed rows after one another).
template <typename M>
int64_t PanelOffset(bool amx, int64_t p, int64_t q) {
  constexpr int64_t kUnit = kLanes * kPack<M>;
  return amx ? ((p / 16 * 4 + q) * 16 + p % 16) * kUnit : (p * 4 + q) * kUnit;
}

// Writes the panel units of 16 columns (source rows: src, stride ld, the first `lanes` of
// them real, the rest zero) for the packed rows [p0, p0 + 16) below `packed_rows` whose
// source elements are [k0, k0 + 16 kPack) of each row (zero from `k_end` on), through
// dst(p): dst(p)[lane * kPack + j] = src[lane * ld + k], k = k0 + (p - p0) kPack + j.
// Element by element: the reference of the instruction sets' versions (PackBlock).
template <typename M, typename Dst>
void PackBlockNaive(const M* src, int64_t ld, int64_t lanes, int64_t k0, int64_t k_end, int64_t p0,
                    int64_t packed_rows, const Dst& dst) {
  for (int64_t p = p0; p < p0 + 16 && p < packed_rows; ++p) {
    M* unit = dst(p);
    for (int64_t lane = 0; lane < kLanes; ++lane)
      for (int64_t j = 0; j < kPack<M>; ++j) {
        const int64_t k = k0 + (p - p0) * kPack<M> + j;
        unit[lane * kPack<M> + j] = lane < lanes && k < k_end ? src[lane * ld + k] : M{};
      }
  }
}

}  // namespace jaxlstm

#endif  // JAXLSTM_CSRC_LAYOUT_H_
