// The backward loop of one layer (include after simd.h; compiled in the instruction set's
// namespace): see jaxlstm/csrc/README.md for what it computes and its arrays' layouts.

namespace jaxlstm::JAXLSTM_ISA {

// Asks for the cache line holding p now: the epilogues' inputs (residuals) come from
// memory and are fetched while the item's matmul runs.
inline void Prefetch(const float* p) {
  _mm_prefetch(reinterpret_cast<const char*>(p), _MM_HINT_T0);
}

template <typename M>
struct Backward {
  Shape s;
  const float* d_ys;
  const float *acts[2], *cs[2];  // per direction
  const M* w_hh[2];              // per direction (G, H)
  const float* c0;
  const int32_t* lengths;
  const float *d_hn, *d_cn;
  float* dgates[2];  // per direction; may alias acts
  float *dh0, *dc0;
  bool amx;          // bfloat16 products in AMX tiles: G % 32 == 0
  M* gm = nullptr;   // the bfloat16 copies below
  int64_t rows = 0;  // their rows: N, or N padded to whole AMX row blocks

  template <typename Pool>  // XLA's intra-op pool (see Team)
  void Run(Pool& pool) {
    const int64_t tiles = (s.H + kPanel - 1) / kPanel, G = s.G(), DNH = s.D * s.N * s.H;
    const RowBlocks blocks(s.N);
    rows = amx ? blocks.Rows() : s.N;
    const M* panels = PackBackward(s, w_hh, amx);
    // The matmul's operand: the gate cotangents themselves, or (rows, D, G) copies in M of
    // the last two steps' (step s in copy s % 2; rows past N are never written).
    if constexpr (!std::is_same_v<M, float>) gm = Scratch<M>(kCopySlot, 2 * rows * s.D * G);
    // dh0 holds the part of dh that passes frozen (masked) steps; dc0 the cell cotangent.
    std::copy(d_hn, d_hn + DNH, dh0);
    std::copy(d_cn, d_cn + DNH, dc0);
    const int64_t items = s.D * tiles;
    const int threads = ThreadsFor(items, 2.0 * s.N * s.H * G * s.D);
    float* scratch = Scratch<float>(kAccSlot, threads * kPanel * rows);  // accumulators
    const TileConfig tile_config(blocks.height);
    const TileConfig* amx_tiles = amx ? &tile_config : nullptr;
    // Team step k handles scan step L - k: the gradient arriving from step L - k (none
    // for k = 0), then the cotangents of step L - k - 1, or dh0 after the last.
    Team::Run(pool, threads, items, s.L + 1, false, amx_tiles,
              [&](int64_t item, int64_t k, int thread) {
                const int64_t step = s.L - k, d = item / tiles, v = item % tiles;
                float* acc = &scratch[thread * kPanel * rows];
                if (step > 0) {  // the residuals of the step whose cotangents this item computes
                  const int64_t t = s.Time(d, step - 1);
                  for (int64_t n = 0; n < s.N; ++n)
                    for (int64_t unit = v * kPanel; unit < std::min(s.H, (v + 1) * kPanel);
                         unit += kLanes) {
                      const int64_t res = s.Residual(t, n);
                      for (int q = 0; q < 4; ++q) Prefetch(acts[d] + res * G + q * s.H + unit);
                      Prefetch(cs[d] + res * s.H + unit);
                      Prefetch(d_ys + s.Row(t, n, d) * s.H + unit);
                    }
                }
                if (step < s.L) {  // dh from the step after: dgates of that step @ w_hh
                  const M* a;
                  int64_t lda;
                  if constexpr (std::is_same_v<M, float>) {
                    a = dgates[d] + s.Residual(s.Time(d, step), 0) * G;
                    lda = G;
                  } else {
                    a = &gm[((step % 2) * rows * s.D + d) * G];
                    lda = s.D * G;
                  }
                  const M* panel = &panels[item * G * kPanel];
                  if (!amx) {
                    Product(a, lda, s.N, panel, G, false, acc);
                  } else {
#if defined(JAXLSTM_AVX512)
                    if constexpr (std::is_same_v<M, Bf16>)
                      AmxProduct(blocks.blocks, blocks.height, {{a, lda, panel, G}}, acc);
#endif
                  }
                } else {
                  std::fill(acc, acc + kPanel * s.N, 0.0f);
                }
                for (int64_t n = 0; n < s.N; ++n)
                  for (int q = 0; q < 4; ++q) {
                    const int64_t unit = v * kPanel + q * kLanes;
                    if (unit >= s.H) break;
                    const Mask m = UnitMask(unit, s.H);
                    const int64_t state = (d * s.N + n) * s.H + unit;
                    const Vec dh = Add(LoadU(&acc[kPanel * n + kLanes * q]), Load(m, dh0 + state));
                    if (step == 0) {
                      Store(m, dh0 + state, dh);
                    } else {
                      Epilogue(step - 1, d, n, unit, m, dh);
                    }
                  }
              });
  }

  // The cotangents of scan step `step` of direction d for 16 units of row n, from dh
  // arriving at its output.
  void Epilogue(int64_t step, int64_t d, int64_t n, int64_t unit, Mask m, Vec dh) {
    const int64_t G = s.G(), t = s.Time(d, step), res = s.Residual(t, n);
    const int64_t state = (d * s.N + n) * s.H + unit;
    float* dg = dgates[d] + res * G + unit;
    const int64_t copy = ((step % 2) * rows * s.D + n * s.D + d) * G + unit;  // in gm
    auto put = [&](int q, Vec v) {
      Store(m, dg + q * s.H, v);
      if constexpr (!std::is_same_v<M, float>) StoreBf16(m, gm + copy + q * s.H, v);
    };
    if (t >= lengths[n]) {  // a frozen step: dh and dc pass through, no gate cotangents
      for (int q = 0; q < 4; ++q) put(q, Zero());
      Store(m, dh0 + state, dh);
      return;
    }
    const float* a = acts[d] + res * G + unit;
    const Vec i = Load(m, a), f = Load(m, a + s.H), g = Load(m, a + 2 * s.H);
    const Vec o = Load(m, a + 3 * s.H);
    const Vec c = Load(m, cs[d] + res * s.H + unit);
    const Vec c_prev = step > 0 ? Load(m, cs[d] + s.Residual(s.Time(d, step - 1), n) * s.H + unit)
                                : Load(m, c0 + state);
    const Vec dr = Add(dh, Load(m, d_ys + s.Row(t, n, d) * s.H + unit));
    const Vec one = Set(1.0f), tanh_c = Tanh(c);
    const Vec dc = Fma(Mul(dr, o), Fnma(tanh_c, tanh_c, one), Load(m, dc0 + state));
    const Vec di = Mul(Mul(dc, g), Mul(i, Sub(one, i)));
    const Vec df = Mul(Mul(dc, c_prev), Mul(f, Sub(one, f)));
    const Vec dgg = Mul(Mul(dc, i), Fnma(g, g, one));
    const Vec do_ = Mul(Mul(dr, tanh_c), Mul(o, Sub(one, o)));
    put(0, di);  // dg may alias a: every gate was loaded above
    put(1, df);
    put(2, dgg);
    put(3, do_);
    Store(m, dc0 + state, Mul(dc, f));
    Store(m, dh0 + state, Zero());
  }
};

}  // namespace jaxlstm::JAXLSTM_ISA
