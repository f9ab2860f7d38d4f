// Vectors of 16 float32 values as two AVX2 registers (include through simd.h): the same
// operations as simd_avx512.h's, for float32 operands (no bfloat16 products on AVX2).
#pragma GCC push_options  // popped by the unit, after its kernels (kernels_*.cc)
#pragma GCC target("avx2,fma")

namespace jaxlstm::avx2 {

struct Vec {
  __m256 lo, hi;  // lanes 0-7, 8-15
};
using Mask = uint32_t;  // a bit per lane

// The register tiles of the products (gemm.h): up to kRows batch rows by kQuarters
// quarters of a panel's 64 columns, in kBanks<R> banks of sums (16 registers: 3 x 2
// vectors of sums take 12).
constexpr int kRows = 3, kQuarters = 2;
template <int R>
constexpr int kBanks = R == 1 ? 2 : 1;

namespace internal {
// The 8 lanes of `bits` as an all-ones-or-zero 32-bit vector (AVX2's masks).
inline __m256i Expand(uint32_t bits) {
  const __m256i lane = _mm256_setr_epi32(1, 2, 4, 8, 16, 32, 64, 128);
  return _mm256_cmpeq_epi32(_mm256_and_si256(_mm256_set1_epi32(static_cast<int>(bits)), lane),
                            lane);
}
template <typename Op>
inline Vec Each(Vec a, Vec b, Op op) {
  return {op(a.lo, b.lo), op(a.hi, b.hi)};
}
// 2^k for integral k in [-126, 127] (a float's exponent field).
inline __m256 Pow2(__m256i k) {
  return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_add_epi32(k, _mm256_set1_epi32(127)), 23));
}
inline __m256 Scale2(__m256 p, __m256 n) {
  const __m256i k = _mm256_cvtps_epi32(n), half = _mm256_srai_epi32(k, 1);
  return _mm256_mul_ps(_mm256_mul_ps(p, Pow2(half)), Pow2(_mm256_sub_epi32(k, half)));
}
}  // namespace internal

inline Vec Set(float v) { return {_mm256_set1_ps(v), _mm256_set1_ps(v)}; }
inline Vec Zero() { return {_mm256_setzero_ps(), _mm256_setzero_ps()}; }
inline Vec LoadU(const float* p) { return {_mm256_loadu_ps(p), _mm256_loadu_ps(p + 8)}; }
inline void StoreU(float* p, Vec v) {
  _mm256_storeu_ps(p, v.lo);
  _mm256_storeu_ps(p + 8, v.hi);
}
// The lanes outside m are neither read (may be past the end of memory) nor written.
inline Vec Load(Mask m, const float* p) {
  if (m == 0xffff) return LoadU(p);
  return {_mm256_maskload_ps(p, internal::Expand(m)),
          _mm256_maskload_ps(p + 8, internal::Expand(m >> 8))};
}
inline void Store(Mask m, float* p, Vec v) {
  if (m == 0xffff) return StoreU(p, v);
  _mm256_maskstore_ps(p, internal::Expand(m), v.lo);
  _mm256_maskstore_ps(p + 8, internal::Expand(m >> 8), v.hi);
}
// The first n (0 <= n <= 16) lanes.
inline Mask Lanes(int64_t n) { return (uint32_t{1} << n) - 1u; }

inline Vec Add(Vec a, Vec b) { return internal::Each(a, b, _mm256_add_ps); }
inline Vec Sub(Vec a, Vec b) { return internal::Each(a, b, _mm256_sub_ps); }
inline Vec Mul(Vec a, Vec b) { return internal::Each(a, b, _mm256_mul_ps); }
inline Vec Fma(Vec a, Vec b, Vec c) {  // a b + c
  return {_mm256_fmadd_ps(a.lo, b.lo, c.lo), _mm256_fmadd_ps(a.hi, b.hi, c.hi)};
}
inline Vec Fnma(Vec a, Vec b, Vec c) {  // c - a b
  return {_mm256_fnmadd_ps(a.lo, b.lo, c.lo), _mm256_fnmadd_ps(a.hi, b.hi, c.hi)};
}
// min/max return their second operand when either is NaN.
inline Vec Min(Vec a, Vec b) { return internal::Each(a, b, _mm256_min_ps); }
inline Vec Max(Vec a, Vec b) { return internal::Each(a, b, _mm256_max_ps); }
inline Vec Abs(Vec a) {
  const __m256 magnitude = _mm256_castsi256_ps(_mm256_set1_epi32(INT32_MAX));
  return {_mm256_and_ps(a.lo, magnitude), _mm256_and_ps(a.hi, magnitude)};
}
inline Vec Round(Vec a) {  // to the nearest integer, ties to even
  constexpr int kMode = _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC;
  return {_mm256_round_ps(a.lo, kMode), _mm256_round_ps(a.hi, kMode)};
}
// p * 2^n for integral n in [-126, 128], rounded once (two exact powers of two: 2^128 is
// no float).
inline Vec Scale2(Vec p, Vec n) { return internal::Each(p, n, internal::Scale2); }
// 1 / d for d >= 1, correctly rounded.
inline Vec Recip(Vec d) { return internal::Each(Set(1.0f), d, _mm256_div_ps); }
// |magnitude| with the sign of `sign` (magnitude >= 0).
inline Vec WithSign(Vec magnitude, Vec sign) {
  const __m256 bit = _mm256_castsi256_ps(_mm256_set1_epi32(INT32_MIN));
  return {_mm256_or_ps(magnitude.lo, _mm256_and_ps(sign.lo, bit)),
          _mm256_or_ps(magnitude.hi, _mm256_and_ps(sign.hi, bit))};
}
// Per lane: below where x < limit, else above.
inline Vec SelectBelow(Vec x, Vec limit, Vec below, Vec above) {
  return {_mm256_blendv_ps(above.lo, below.lo, _mm256_cmp_ps(x.lo, limit.lo, _CMP_LT_OQ)),
          _mm256_blendv_ps(above.hi, below.hi, _mm256_cmp_ps(x.hi, limit.hi, _CMP_LT_OQ))};
}

// sums += a (the value at a, broadcast) * b (one 16-column row of a panel).
inline Vec Mac(Vec sums, const float* a, const float* b) {
  const __m256 x = _mm256_broadcast_ss(a);
  return {_mm256_fmadd_ps(x, _mm256_loadu_ps(b), sums.lo),
          _mm256_fmadd_ps(x, _mm256_loadu_ps(b + 8), sums.hi)};
}


// PackBlockNaive (layout.h): packing runs once per call, far from the loop's cost.
template <typename M, typename Dst>
inline void PackBlock(const M* src, int64_t ld, int64_t lanes, int64_t k0, int64_t k_end,
                      int64_t p0, int64_t packed_rows, const Dst& dst) {
  PackBlockNaive(src, ld, lanes, k0, k_end, p0, packed_rows, dst);
}

}  // namespace jaxlstm::avx2
