// The gates' nonlinearities on vectors, to about 1 ulp (include after simd.h; compiled in
// the instruction set's namespace).

namespace jaxlstm::JAXLSTM_ISA {

// exp(x) to about 1 ulp (Cephes' expf polynomial), x clamped to float's range; NaN stays
// NaN (min/max return their second operand when either is NaN).
inline Vec Exp(Vec x) {
  x = Max(Set(-87.33654f), Min(Set(88.37626f), x));
  const Vec n = Round(Mul(x, Set(1.44269504088896341f)));
  Vec r = Fnma(n, Set(0.693359375f), x);
  r = Fnma(n, Set(-2.12194440e-4f), r);
  Vec p = Set(1.9875691500e-4f);
  p = Fma(p, r, Set(1.3981999507e-3f));
  p = Fma(p, r, Set(8.3334519073e-3f));
  p = Fma(p, r, Set(4.1665795894e-2f));
  p = Fma(p, r, Set(1.6666665459e-1f));
  p = Fma(p, r, Set(5.0000001201e-1f));
  p = Fma(p, Mul(r, r), Add(r, Set(1.0f)));
  return Scale2(p, n);
}

inline Vec Sigmoid(Vec x) { return Recip(Add(Set(1.0f), Exp(Sub(Set(0.0f), x)))); }

// tanh(x): an odd polynomial below |x| = 0.625 (Cephes' tanhf), 1 - 2 / (exp(2|x|) + 1)
// above, the sign restored.
inline Vec Tanh(Vec x) {
  const Vec ax = Abs(x), s = Mul(x, x);
  Vec p = Set(-5.70498872745e-3f);
  p = Fma(p, s, Set(2.06390887954e-2f));
  p = Fma(p, s, Set(-5.37397155531e-2f));
  p = Fma(p, s, Set(1.33314422036e-1f));
  p = Fma(p, s, Set(-3.33332819422e-1f));
  const Vec small = Fma(Mul(p, s), x, x);
  const Vec e = Exp(Add(ax, ax));
  const Vec large = Fnma(Set(2.0f), Recip(Add(e, Set(1.0f))), Set(1.0f));
  return SelectBelow(ax, Set(0.625f), small, WithSign(large, x));
}

}  // namespace jaxlstm::JAXLSTM_ISA
