// The packed weight panels and the products over them (jaxlstm/csrc/layout.h, pack.h,
// gemm.h) against element-by-element versions, for the instruction set this program is
// built for (JAXLSTM_AVX512 or not): float32, and bfloat16 with AVX-512.
#include <cmath>
#include <cstdint>
#include <cstring>
#include <random>
#include <vector>

// clang-format off: simd.h first (see it)
#include "check.h"
#include "simd.h"
#include "gemm.h"
#include "pack.h"
// clang-format on

namespace {

using namespace jaxlstm;
using namespace jaxlstm::JAXLSTM_ISA;

std::mt19937 rng(7);

float Random() { return std::uniform_real_distribution<float>(-1, 1)(rng); }

template <typename M>
M FromFloat(float v);
template <>
float FromFloat<float>(float v) {
  return v;
}
template <>
Bf16 FromFloat<Bf16>(float v) {  // truncated: any bfloat16 value will do
  uint32_t bits;
  std::memcpy(&bits, &v, sizeof(bits));
  return Bf16{static_cast<uint16_t>(bits >> 16)};
}
float ToFloat(float v) { return v; }
float ToFloat(Bf16 v) {
  const uint32_t bits = uint32_t{v.bits} << 16;
  float f;
  std::memcpy(&f, &bits, sizeof(f));
  return f;
}
bool Same(float a, float b) { return std::memcmp(&a, &b, sizeof(a)) == 0; }
bool Same(Bf16 a, Bf16 b) { return a.bits == b.bits; }

template <typename M>
std::vector<M> RandomArray(int64_t n) {
  std::vector<M> a(n);
  for (M& v : a) v = FromFloat<M>(Random());
  return a;
}

template <typename M>
void CheckPackBlock() {
  const int64_t ld = 100;
  const std::vector<M> src = RandomArray<M>(16 * ld);
  for (int64_t lanes : {1, 7, 16})
    for (int64_t k0 : {int64_t{0}, 16 * kPack<M>})
      for (int64_t count : {int64_t{1}, int64_t{5}, 16 * kPack<M>, ld - 16 * kPack<M>}) {
        const int64_t k_end = std::min(ld, k0 + count);
        for (int64_t packed_rows : {int64_t{3}, int64_t{16}, int64_t{40}}) {
          const int64_t p0 = packed_rows > 16 ? 16 : 0;
          std::vector<M> fast(40 * kPanel, FromFloat<M>(9)), naive = fast;
          auto at = [](std::vector<M>& v) {
            return [&v](int64_t p) { return &v[p * kLanes * kPack<M>]; };
          };
          PackBlock(src.data(), ld, lanes, k0, k_end, p0, packed_rows, at(fast));
          PackBlockNaive(src.data(), ld, lanes, k0, k_end, p0, packed_rows, at(naive));
          bool same = true;
          for (size_t i = 0; i < fast.size(); ++i) same = same && Same(fast[i], naive[i]);
          CHECK(same) << "lanes " << lanes << " k0 " << k0 << " k_end " << k_end << " packed_rows "
                      << packed_rows;
        }
      }
}

// Every element of the forward panels: W[k][gate * 16 + lane] = [w_ih | w_hh][d][gate * H
// + 16 u + lane][k], zero past H and past the operands' sizes.
template <typename M>
void CheckPackForward(int64_t D, int64_t H, int64_t I, bool amx) {
  const Shape s{1, 1, D, H, I};
  const int64_t G = 4 * H, Ie = Padded<M>(I), He = amx ? (H + 31) / 32 * 32 : Padded<M>(H);
  const int64_t tiles = (H + kLanes - 1) / kLanes, K = Ie + He;
  std::vector<M> ih[2] = {RandomArray<M>(G * Ie), RandomArray<M>(G * Ie)};
  std::vector<M> hh[2] = {RandomArray<M>(G * H), RandomArray<M>(G * H)};
  const M* w_ih[2] = {ih[0].data(), ih[1].data()};
  const M* w_hh[2] = {hh[0].data(), hh[1].data()};
  const M* packed = PackForward(s, w_ih, w_hh, He, amx);
  int64_t wrong = 0;
  for (int64_t d = 0; d < D; ++d)
    for (int64_t u = 0; u < tiles; ++u)
      for (int gate = 0; gate < 4; ++gate)
        for (int64_t lane = 0; lane < kLanes; ++lane)
          for (int64_t k = 0; k < K; ++k) {
            const int64_t unit = u * kLanes + lane, row = gate * H + unit;
            float want = 0;
            if (unit < H && k < Ie) want = ToFloat(ih[d][row * Ie + k]);
            if (unit < H && k >= Ie && k - Ie < H) want = ToFloat(hh[d][row * H + k - Ie]);
            const M* panel = packed + (d * tiles + u) * K * kPanel;
            const M got =
                panel[PanelOffset<M>(amx, k / kPack<M>, gate) + lane * kPack<M> + k % kPack<M>];
            wrong += ToFloat(got) != want;
          }
  CHECK(wrong == 0) << wrong << " wrong elements: D " << D << " H " << H << " I " << I << " amx "
                    << amx;
}

// Every element of the backward panels: W[k][q * 16 + lane] = w_hh[d][k][64 v + 16 q +
// lane] for k < 4H, zero past H.
template <typename M>
void CheckPackBackward(int64_t D, int64_t H, bool amx) {
  const Shape s{1, 1, D, H, 0};
  const int64_t G = 4 * H, tiles = (H + kPanel - 1) / kPanel;
  std::vector<M> hh[2] = {RandomArray<M>(G * H), RandomArray<M>(G * H)};
  const M* w_hh[2] = {hh[0].data(), hh[1].data()};
  const M* packed = PackBackward(s, w_hh, amx);
  int64_t wrong = 0;
  for (int64_t d = 0; d < D; ++d)
    for (int64_t v = 0; v < tiles; ++v)
      for (int64_t col = 0; col < kPanel; ++col)
        for (int64_t k = 0; k < G; ++k) {
          const int64_t unit = v * kPanel + col;
          const float want = unit < H ? ToFloat(hh[d][k * H + unit]) : 0.0f;
          const M* panel = packed + (d * tiles + v) * G * kPanel;
          const int64_t at = PanelOffset<M>(amx, k / kPack<M>, col / kLanes) +
                             col % kLanes * kPack<M> + k % kPack<M>;
          wrong += ToFloat(panel[at]) != want;
        }
  CHECK(wrong == 0) << wrong << " wrong elements: D " << D << " H " << H << " amx " << amx;
}

// Product (row tiles of every height, k beyond one block of kDepth) against sums in double.
template <typename M>
void CheckProduct(int64_t rows, int64_t k, bool add) {
  const int64_t lda = k + 3;
  const std::vector<M> a = RandomArray<M>(rows * lda), w = RandomArray<M>(k * kPanel);
  std::vector<M> panel(k * kPanel);
  auto row = [&](int64_t p) { return &panel[p * kPanel * kPack<M>]; };
  for (int64_t q = 0; q < 4; ++q)  // the weights (k, 64) as four 16-column source blocks
    for (int64_t p0 = 0; p0 < k / kPack<M>; p0 += 16) {
      std::vector<M> block(16 * k);
      for (int64_t lane = 0; lane < 16; ++lane)
        for (int64_t kk = 0; kk < k; ++kk) block[lane * k + kk] = w[kk * kPanel + q * 16 + lane];
      PackBlockNaive(block.data(), k, 16, p0 * kPack<M>, k, p0, k / kPack<M>,
                     [&](int64_t p) { return row(p) + q * kLanes * kPack<M>; });
    }
  std::vector<float> acc(rows * kPanel);
  for (float& v : acc) v = Random();
  const std::vector<float> before = acc;
  Product(a.data(), lda, rows, panel.data(), k, add, acc.data());
  double worst = 0;
  for (int64_t n = 0; n < rows; ++n)
    for (int64_t col = 0; col < kPanel; ++col) {
      double want = add ? before[n * kPanel + col] : 0.0, scale = std::fabs(want);
      for (int64_t kk = 0; kk < k; ++kk) {
        const double term = double{ToFloat(a[n * lda + kk])} * ToFloat(w[kk * kPanel + col]);
        want += term;
        scale += std::fabs(term);
      }
      worst = std::max(worst, std::fabs(acc[n * kPanel + col] - want) / scale);
    }
  CHECK(worst < 1e-6) << "rows " << rows << " k " << k << " add " << add << ": " << worst;
}

template <typename M>
void CheckAll() {
  CheckPackBlock<M>();
  for (int64_t H : {5, 16, 37, 70})
    for (int64_t I : {1, 13, 40}) CheckPackForward<M>(2, H, I, false);
  CheckPackForward<M>(1, 64, 3, false);
  for (int64_t H : {5, 37, 64, 130}) CheckPackBackward<M>(2, H, false);
  for (int64_t rows : {1, 2, 3, 4, 5, 6, 7, 13, 32})
    for (int64_t k : {kPack<M>, 41 * kPack<M>, 301 * kPack<M>})  // odd packed rows: the tail
      for (bool add : {false, true}) CheckProduct<M>(rows, k, add);
}

TEST(float32_panels_and_products) { CheckAll<float>(); }

TEST(bfloat16_panels_and_products) {
  CheckAll<Bf16>();
  for (int64_t H : {5, 37, 70}) CheckPackForward<Bf16>(2, H, 32, /*amx=*/true);  // tile order
  CheckPackBackward<Bf16>(2, 40, /*amx=*/true);
}

// StoreBf16 rounds to nearest even, as XLA converts, under its mask.
TEST(bfloat16_stores_round_to_nearest_even) {
  const float values[16] = {1.0f,  1.00390625f, 1.01171875f, -2.5f,    3.0e38f,  1e-40f,
                            -0.0f, 0.1f,        1.00390637f, 65504.0f, 1.0f / 3, -7.0f,
                            1e-3f, 2.0f,        4.0f,        8.0f};
  // 1 + 2^-8 is a tie: to the even 1.0 (one float above it: up); 1 + 3 * 2^-8 a tie: to
  // the even 1 + 2^-6.
  const uint16_t want[16] = {0x3f80, 0x3f80, 0x3f82, 0xc020, 0x7f62, 0x0001, 0x8000, 0x3dcd,
                             0x3f81, 0x4780, 0x3eab, 0xc0e0, 0x3a83, 0x4000, 0x4080, 0x4100};
  Bf16 out[16];
  for (Bf16& b : out) b.bits = 0x1234;
  StoreBf16(Lanes(16), out, LoadU(values));
  for (int i = 0; i < 16; ++i) CHECK(out[i].bits == want[i]) << i << ": " << out[i].bits;
  const float nan = std::nanf("");
  float with_nan[16] = {nan, -nan};
  for (Bf16& b : out) b.bits = 0x1234;
  StoreBf16(Lanes(3), out, LoadU(with_nan));
  CHECK((out[0].bits & 0x7fc0) == 0x7fc0 && (out[1].bits & 0x7fc0) == 0x7fc0);  // quiet NaNs
  CHECK(out[2].bits == 0 && out[3].bits == 0x1234);  // masked: lane 3 on is untouched
}

}  // namespace

CHECK_MAIN(JAXLSTM_ISA_NAME)
