// The step matmuls on vector registers (include after simd.h; compiled in the instruction
// set's namespace): rows of the left operand times a packed panel of 64 columns.

namespace jaxlstm::JAXLSTM_ISA {

// acc[64 r + 16 q + lane] (+)= sum_k a[r * lda + k] * W[k][16 q + lane] for R rows of a,
// W a panel of `rows` packed rows, kQuarters quarters (16 columns each) at a time. The
// sums are kept in local registers (acc may alias memory the loop reads). One or two rows
// give too few independent sums to hide the multiply-add latency; they get two banks of
// sums (kBanks), over even and odd packed rows.
template <int R, typename M>
inline void Gemm(const M* a, int64_t lda, const M* panel, int64_t rows, bool add, float* acc) {
  constexpr int kB = kBanks<R>;
  constexpr int64_t kRow = kPanel * kPack<M>, kQ = kLanes * kPack<M>;
  for (int q0 = 0; q0 < 4; q0 += kQuarters) {
    Vec c[kB][R][kQuarters];
#pragma GCC unroll 2
    for (int bank = 0; bank < kB; ++bank)
#pragma GCC unroll 6
      for (int r = 0; r < R; ++r)
#pragma GCC unroll 4
        for (int q = 0; q < kQuarters; ++q)
          c[bank][r][q] = add && bank == 0 ? LoadU(acc + kPanel * r + kLanes * (q0 + q)) : Zero();
    auto step = [&](int64_t p, Vec(&sums)[R][kQuarters]) {
      const M* row = panel + p * kRow + q0 * kQ;
#pragma GCC unroll 6
      for (int r = 0; r < R; ++r) {
        const M* ar = a + r * lda + p * kPack<M>;
#pragma GCC unroll 4
        for (int q = 0; q < kQuarters; ++q) sums[r][q] = Mac(sums[r][q], ar, row + q * kQ);
      }
    };
    int64_t p = 0;
    for (; p + kB <= rows; p += kB)
#pragma GCC unroll 2
      for (int bank = 0; bank < kB; ++bank) step(p + bank, c[bank]);
    for (; p < rows; ++p) step(p, c[0]);
#pragma GCC unroll 6
    for (int r = 0; r < R; ++r)
#pragma GCC unroll 4
      for (int q = 0; q < kQuarters; ++q) {
        Vec sum = c[0][r][q];
        for (int bank = 1; bank < kB; ++bank) sum = Add(sum, c[bank][r][q]);
        StoreU(acc + kPanel * r + kLanes * (q0 + q), sum);
      }
  }
}

// Gemm for a row tile of `height` (1 <= height <= R) rows.
template <int R, typename M>
inline void GemmRows(int64_t height, const M* a, int64_t lda, const M* panel, int64_t rows,
                     bool add, float* acc) {
  if constexpr (R > 1) {
    if (height < R) return GemmRows<R - 1>(height, a, lda, panel, rows, add, acc);
  }
  Gemm<R>(a, lda, panel, rows, add, acc);
}

// acc[64 n + 16 q + lane] (+)= sum_k a[n * lda + k] * W[k][16 q + lane] for all `rows`
// rows of a, over the `k` values (a multiple of kPack) of a panel, taken kDepth packed
// rows at a time so that its block stays in the L1 cache while every row tile passes.
template <typename M>
inline void Product(const M* a, int64_t lda, int64_t rows, const M* panel, int64_t k, bool add,
                    float* acc) {
  constexpr int64_t kDepth = 128;
  const int64_t packed = k / kPack<M>;
  for (int64_t p0 = 0; p0 < packed; p0 += kDepth) {
    const int64_t depth = std::min(kDepth, packed - p0);
    const M* block = panel + p0 * kPanel * kPack<M>;
    // Row tiles of as equal sizes as kRows allows (32 rows: 6 6 5 5 5 5, not 6 x 5 + 2).
    const int64_t tiles = (rows + kRows - 1) / kRows;
    for (int64_t tile = 0, n0 = 0; tile < tiles; ++tile) {
      const int64_t height = rows / tiles + (tile < rows % tiles ? 1 : 0);
      GemmRows<kRows>(height, a + n0 * lda + p0 * kPack<M>, lda, block, depth, add || p0 > 0,
                      acc + kPanel * n0);
      n0 += height;
    }
  }
}

}  // namespace jaxlstm::JAXLSTM_ISA
