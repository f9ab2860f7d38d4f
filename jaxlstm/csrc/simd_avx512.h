// Vectors of 16 float32 values in AVX-512 registers (include through simd.h), and the
// bfloat16 operations of AVX512_BF16.
#pragma GCC push_options  // popped by the unit, after its kernels (kernels_*.cc)
#pragma GCC target("avx512f,avx512dq,avx512bw,avx512vl,avx512bf16,fma")

namespace jaxlstm::avx512 {

using Vec = __m512;
using Mask = __mmask16;  // a bit per lane

// The register tiles of the products (gemm.h): up to kRows batch rows by kQuarters
// quarters of a panel's 64 columns, in kBanks<R> banks of sums (32 registers).
constexpr int kRows = 6, kQuarters = 4;
template <int R>
constexpr int kBanks = R <= 2 ? 2 : 1;

inline Vec Set(float v) { return _mm512_set1_ps(v); }
inline Vec Zero() { return _mm512_setzero_ps(); }
inline Vec LoadU(const float* p) { return _mm512_loadu_ps(p); }
inline void StoreU(float* p, Vec v) { _mm512_storeu_ps(p, v); }
// The lanes outside m are neither read (may be past the end of memory) nor written.
inline Vec Load(Mask m, const float* p) { return _mm512_maskz_loadu_ps(m, p); }
inline void Store(Mask m, float* p, Vec v) { _mm512_mask_storeu_ps(p, m, v); }
// The first n (0 <= n <= 16) lanes.
inline Mask Lanes(int64_t n) { return static_cast<Mask>((uint32_t{1} << n) - 1u); }

inline Vec Add(Vec a, Vec b) { return _mm512_add_ps(a, b); }
inline Vec Sub(Vec a, Vec b) { return _mm512_sub_ps(a, b); }
inline Vec Mul(Vec a, Vec b) { return _mm512_mul_ps(a, b); }
inline Vec Fma(Vec a, Vec b, Vec c) { return _mm512_fmadd_ps(a, b, c); }    // a b + c
inline Vec Fnma(Vec a, Vec b, Vec c) { return _mm512_fnmadd_ps(a, b, c); }  // c - a b
// min/max return their second operand when either is NaN.
inline Vec Min(Vec a, Vec b) { return _mm512_min_ps(a, b); }
inline Vec Max(Vec a, Vec b) { return _mm512_max_ps(a, b); }
inline Vec Abs(Vec a) { return _mm512_abs_ps(a); }
inline Vec Round(Vec a) {  // to the nearest integer, ties to even
  return _mm512_roundscale_ps(a, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
}
// p * 2^n for integral n in [-126, 128], rounded once.
inline Vec Scale2(Vec p, Vec n) { return _mm512_scalef_ps(p, n); }
// 1 / d for d >= 1: the 14-bit estimate and one Newton step (relative error ~2^-28, below
// float rounding), cheaper than a division.
inline Vec Recip(Vec d) {
  const Vec r = _mm512_rcp14_ps(d);
  return Mul(r, Fnma(d, r, Set(2.0f)));
}
// |magnitude| with the sign of `sign` (magnitude >= 0).
inline Vec WithSign(Vec magnitude, Vec sign) {
  const __m512i bit = _mm512_set1_epi32(INT32_MIN);
  return _mm512_castsi512_ps(_mm512_or_si512(_mm512_castps_si512(magnitude),
                                             _mm512_and_si512(_mm512_castps_si512(sign), bit)));
}
// Per lane: below where x < limit, else above.
inline Vec SelectBelow(Vec x, Vec limit, Vec below, Vec above) {
  return _mm512_mask_blend_ps(_mm512_cmp_ps_mask(x, limit, _CMP_LT_OQ), above, below);
}

// sums += a (the k-pair or value at a, broadcast) * b (one 16-column row of a panel).
inline Vec Mac(Vec sums, const float* a, const float* b) {
  return Fma(_mm512_set1_ps(*a), LoadU(b), sums);
}
inline Vec Mac(Vec sums, const Bf16* a, const Bf16* b) {
  int32_t pair;
  std::memcpy(&pair, a, sizeof(pair));
  return _mm512_dpbf16_ps(sums, (__m512bh)_mm512_set1_epi32(pair), (__m512bh)_mm512_loadu_si512(b));
}

// 16 float32 values as bfloat16 bits (round to nearest even, as XLA converts), stored
// under mask m.
inline void StoreBf16(Mask m, Bf16* p, Vec v) {
  _mm256_mask_storeu_epi16(p, m, (__m256i)_mm512_cvtneps_pbh(v));
}

// PackUnit (pack.h) for bfloat16: rows k and k + 1, the k of a pair adjacent.
inline void PackUnit(const Bf16* src, int64_t ld, int64_t k, int64_t rows, Mask m, Bf16* dst) {
  const __m256i zero = _mm256_setzero_si256();
  const __m256i r0 = k < rows ? _mm256_maskz_loadu_epi16(m, src) : zero;
  const __m256i r1 = k + 1 < rows ? _mm256_maskz_loadu_epi16(m, src + ld) : zero;
  const __m512i pairs =
      _mm512_or_si512(_mm512_cvtepu16_epi32(r0), _mm512_slli_epi32(_mm512_cvtepu16_epi32(r1), 16));
  _mm512_storeu_si512(dst, pairs);
}

// A 16 x 16 block of 32-bit elements transposed in registers: r[j] becomes column j.
inline void Transpose16(__m512i (&r)[16]) {
  __m512i t[16];
  for (int i = 0; i < 16; i += 2) {  // 32-bit pairs of rows i, i + 1
    t[i] = _mm512_unpacklo_epi32(r[i], r[i + 1]);
    t[i + 1] = _mm512_unpackhi_epi32(r[i], r[i + 1]);
  }
  for (int i = 0; i < 16; i += 4) {  // 64-bit pairs
    for (int j = 0; j < 2; ++j) {
      r[i + j] = _mm512_unpacklo_epi64(t[i + j], t[i + 2 + j]);
      r[i + 2 + j] = _mm512_unpackhi_epi64(t[i + j], t[i + 2 + j]);
    }
  }
  for (int i = 0; i < 16; i += 8) {  // 128-bit lanes, then 256-bit halves
    for (int j = 0; j < 4; ++j) {
      t[i + j] = _mm512_shuffle_i32x4(r[i + j], r[i + 4 + j], 0x88);
      t[i + 4 + j] = _mm512_shuffle_i32x4(r[i + j], r[i + 4 + j], 0xdd);
    }
  }
  for (int j = 0; j < 8; ++j) {
    r[j] = _mm512_shuffle_i32x4(t[j], t[8 + j], 0x88);
    r[8 + j] = _mm512_shuffle_i32x4(t[j], t[8 + j], 0xdd);
  }
  // The 64-bit unpacks leave columns 4 a + 1 and 4 a + 2 swapped.
  for (int a = 0; a < 16; a += 4) std::swap(r[a + 1], r[a + 2]);
}

// The first `count` elements of a source row (float32, or bfloat16 counted in elements)
// as 64 bytes, zero past them.
inline __m512i LoadRow(const float* row, int64_t count) {
  const Mask m = count >= 16 ? Mask{0xffff} : Lanes(count);
  return _mm512_castps_si512(Load(m, row));
}
inline __m512i LoadRow(const Bf16* row, int64_t count) {
  const __mmask32 m = count >= 32 ? 0xffffffffu : (uint32_t{1} << count) - 1u;
  return _mm512_maskz_loadu_epi16(m, row);
}

// PackBlockNaive (layout.h), 16 source rows transposed in registers.
template <typename M, typename Dst>
inline void PackBlock(const M* src, int64_t ld, int64_t lanes, int64_t k0, int64_t k_end,
                      int64_t p0, int64_t packed_rows, const Dst& dst) {
  __m512i r[16];
  for (int64_t lane = 0; lane < 16; ++lane) {
    r[lane] = lane < lanes ? LoadRow(src + lane * ld + k0, k_end - k0) : _mm512_setzero_si512();
  }
  Transpose16(r);
  for (int64_t j = 0; j < 16 && p0 + j < packed_rows; ++j) _mm512_storeu_si512(dst(p0 + j), r[j]);
}

}  // namespace jaxlstm::avx512
