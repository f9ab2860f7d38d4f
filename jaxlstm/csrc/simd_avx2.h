// Vectors of 16 float32 values as two AVX2 registers (include through simd.h): the same
// operations as simd_avx512.h's. AVX2 has no bfloat16 arithmetic: bfloat16 operands are
// widened to float32 (exactly: a bfloat16 is a float32's upper half) and multiplied with
// FMAs, in AVX512_BF16's order, so the products read half the memory at float32's speed.
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
// The float32 values of the even and odd bfloat16 halves of 8 32-bit pairs.
inline __m256 Even(__m256i pairs) { return _mm256_castsi256_ps(_mm256_slli_epi32(pairs, 16)); }
inline __m256 Odd(__m256i pairs) {
  return _mm256_castsi256_ps(
      _mm256_and_si256(pairs, _mm256_set1_epi32(static_cast<int>(0xffff0000u))));
}
// 8 float32 values as bfloat16 bits in the low halves of 32-bit lanes, rounded to
// nearest even as XLA converts (NaN stays a quiet NaN of its sign).
inline __m256i RoundToBf16(__m256 v) {
  const __m256i u = _mm256_castps_si256(v);
  const __m256i lsb = _mm256_and_si256(_mm256_srli_epi32(u, 16), _mm256_set1_epi32(1));
  const __m256i rounded =
      _mm256_srli_epi32(_mm256_add_epi32(_mm256_add_epi32(u, _mm256_set1_epi32(0x7fff)), lsb), 16);
  const __m256i nan = _mm256_or_si256(_mm256_srli_epi32(u, 16), _mm256_set1_epi32(0x0040));
  return _mm256_blendv_epi8(rounded, nan, _mm256_castps_si256(_mm256_cmp_ps(v, v, _CMP_UNORD_Q)));
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

// sums += a (the k-pair at a, broadcast) * b (one 16-column row of a bfloat16 panel: 16
// pairs along k): the odd k, then the even one, as AVX512_BF16's dot product adds them.
inline Vec Mac(Vec sums, const Bf16* a, const Bf16* b) {
  uint32_t pair;
  std::memcpy(&pair, a, sizeof(pair));
  const __m256i both = _mm256_set1_epi32(static_cast<int>(pair));
  const __m256 a_even = internal::Even(both), a_odd = internal::Odd(both);
  const __m256i lo = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(b));
  const __m256i hi = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(b) + 1);
  return {_mm256_fmadd_ps(a_even, internal::Even(lo),
                          _mm256_fmadd_ps(a_odd, internal::Odd(lo), sums.lo)),
          _mm256_fmadd_ps(a_even, internal::Even(hi),
                          _mm256_fmadd_ps(a_odd, internal::Odd(hi), sums.hi))};
}

// 16 float32 values as bfloat16 bits (round to nearest even, as XLA converts), stored
// under mask m.
inline void StoreBf16(Mask m, Bf16* p, Vec v) {
  // packus interleaves 128-bit lanes: lo 0-3, hi 0-3 (lanes 8-11), lo 4-7, hi 4-7.
  const __m256i packed =
      _mm256_packus_epi32(internal::RoundToBf16(v.lo), internal::RoundToBf16(v.hi));
  const __m256i ordered = _mm256_permute4x64_epi64(packed, 0xd8);
  if (m == 0xffff) {
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(p), ordered);
    return;
  }
  alignas(32) uint16_t bits[16];
  _mm256_store_si256(reinterpret_cast<__m256i*>(bits), ordered);
  for (int lane = 0; lane < 16; ++lane)
    if (m >> lane & 1) p[lane].bits = bits[lane];
}

// PackUnit (pack.h) for bfloat16: rows k and k + 1, the k of a pair adjacent.
inline void PackUnit(const Bf16* src, int64_t ld, int64_t k, int64_t rows, Mask m, Bf16* dst) {
  for (int64_t lane = 0; lane < 16; ++lane) {
    const bool real = m >> lane & 1;
    dst[2 * lane] = real && k < rows ? src[lane] : Bf16{};
    dst[2 * lane + 1] = real && k + 1 < rows ? src[ld + lane] : Bf16{};
  }
}

// PackBlockNaive (layout.h): packing runs once per call, far from the loop's cost.
template <typename M, typename Dst>
inline void PackBlock(const M* src, int64_t ld, int64_t lanes, int64_t k0, int64_t k_end,
                      int64_t p0, int64_t packed_rows, const Dst& dst) {
  PackBlockNaive(src, ld, lanes, k0, k_end, p0, packed_rows, dst);
}

}  // namespace jaxlstm::avx2
