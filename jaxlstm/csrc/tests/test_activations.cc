// The gates' nonlinearities (jaxlstm/csrc/activations.h) against libm, in ulp, for the
// instruction set this program is built for (JAXLSTM_AVX512 or not).
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <limits>
#include <vector>

// clang-format off: simd.h first (see it)
#include "check.h"
#include "simd.h"
#include "activations.h"
// clang-format on

namespace {

using namespace jaxlstm::JAXLSTM_ISA;

// f over `xs`, 16 at a time.
template <typename F>
std::vector<float> Apply(F f, const std::vector<float>& xs) {
  std::vector<float> ys(xs.size());
  for (size_t i = 0; i < xs.size(); i += jaxlstm::kLanes) StoreU(&ys[i], f(LoadU(&xs[i])));
  return ys;
}

// About `count` floats from lo to hi, evenly spaced in their bit patterns (every binade
// gets its share), a multiple of 16 of them.
std::vector<float> Sweep(float lo, float hi, int64_t count) {
  auto order = [](float x) {  // the floats' order as integers
    int32_t bits;
    std::memcpy(&bits, &x, sizeof(bits));
    return bits < 0 ? -static_cast<int64_t>(bits & INT32_MAX) : static_cast<int64_t>(bits);
  };
  auto value = [](int64_t i) {
    const int32_t bits = i < 0 ? static_cast<int32_t>(-i) | INT32_MIN : static_cast<int32_t>(i);
    float x;
    std::memcpy(&x, &bits, sizeof(x));
    return x;
  };
  const int64_t first = order(lo), last = order(hi);
  const int64_t step = std::max<int64_t>(1, (last - first) / count);
  std::vector<float> xs;
  for (int64_t i = first; i <= last; i += step) xs.push_back(value(i));
  while (xs.size() % jaxlstm::kLanes != 0) xs.push_back(hi);
  return xs;
}

// The largest error of got against want (in double), in units of the float spacing at want.
double UlpError(const std::vector<float>& xs, const std::vector<float>& got, double (*want)(double),
                float* worst_x) {
  double worst = 0;
  for (size_t i = 0; i < xs.size(); ++i) {
    const double w = want(xs[i]);
    const float wf = static_cast<float>(w);
    const double ulp =
        std::nextafter(std::fabs(wf), std::numeric_limits<float>::infinity()) - std::fabs(wf);
    const double error = std::fabs(got[i] - w) / std::max(ulp, 1e-45);
    if (error > worst) worst = error, *worst_x = xs[i];
  }
  return worst;
}

double Sigmoid64(double x) { return 1 / (1 + std::exp(-x)); }

void CheckUlp(const char* name, Vec (*f)(Vec), double (*want)(double), float lo, float hi,
              double bound) {
  const std::vector<float> xs = Sweep(lo, hi, 1 << 20);
  float worst_x = 0;
  const double error = UlpError(xs, Apply(f, xs), want, &worst_x);
  std::printf("  %s on [%g, %g]: %.2f ulp at most (x = %.9g), %zu points\n", name, lo, hi, error,
              worst_x, xs.size());
  CHECK(error <= bound) << name << ": " << error << " ulp at x = " << worst_x;
}

TEST(exp_within_2_ulp) {
  CheckUlp("exp", Exp, std::exp, -87.0f, 88.0f, 2.0);
  CheckUlp("exp", Exp, std::exp, -1.0f, 1.0f, 2.0);
}

TEST(tanh_within_3_ulp) {
  CheckUlp("tanh", Tanh, std::tanh, -10.0f, 10.0f, 3.0);
  CheckUlp("tanh", Tanh, std::tanh, -0.7f, 0.7f, 3.0);  // both sides of the 0.625 switch
}

TEST(sigmoid_within_4_ulp) {
  CheckUlp("sigmoid", Sigmoid, Sigmoid64, -80.0f, 20.0f, 4.0);  // exp's error, then 1 / (1 + e)
}

TEST(limits_and_nan) {
  const float inf = std::numeric_limits<float>::infinity(), nan = std::nanf("");
  std::vector<float> xs(jaxlstm::kLanes, 0.0f);
  xs[0] = inf, xs[1] = -inf, xs[2] = nan, xs[3] = 1e30f, xs[4] = -1e30f, xs[5] = -0.0f;
  const auto t = Apply(Tanh, xs), s = Apply(Sigmoid, xs), e = Apply(Exp, xs);
  CHECK(t[0] == 1 && t[1] == -1 && std::isnan(t[2]) && t[3] == 1 && t[4] == -1);
  CHECK(t[5] == 0);
  CHECK(s[0] == 1 && s[3] == 1 && s[5] == 0.5f && std::isnan(s[2]));
  CHECK(s[1] >= 0 && s[1] < 1e-38f && s[4] >= 0 && s[4] < 1e-38f) << s[1] << " " << s[4];
  CHECK(e[1] >= 0 && e[1] < 1e-37f && std::isnan(e[2]) && e[5] == 1);
  CHECK(std::isfinite(e[0]) && e[0] > 1e38f);  // clamped to float's range
}

}  // namespace

CHECK_MAIN(JAXLSTM_ISA_NAME)
