// The forward loop of one layer (include after simd.h; compiled in the instruction set's
// namespace): see jaxlstm/csrc/README.md for what it computes and its arrays' layouts.

namespace jaxlstm::JAXLSTM_ISA {

template <typename M>
struct Forward {
  static constexpr int64_t kL2Share = 3 << 19;  // 1.5 MiB of a core's L2 for its panels
  static constexpr int64_t kChunk = 4;          // steps whose input part runs at once

  Shape s;
  const M* x;         // (L, N, Ie): the input size padded to whole packed rows
  const M* w_ih[2];   // per direction (G, Ie)
  const float* b[2];  // (G)
  const M* w_hh[2];   // (G, H)
  const float *h0, *c0;
  const int32_t* lengths;
  float *ys, *hn, *cn;
  float *acts[2], *cs[2];  // residuals, per direction (acts[0] nullptr when not saved)
  M* hp[2];                // the last one, in the matmul dtype
  bool amx;  // bfloat16 products in AMX tiles: x's rows are RowBlocks(N).Rows(), Ie % 32 == 0

  template <typename Pool>  // XLA's intra-op pool (see Team)
  void Run(Pool& pool) const {
    const int64_t tiles = (s.H + kLanes - 1) / kLanes, G = s.G(), DNH = s.D * s.N * s.H;
    const RowBlocks blocks(s.N);
    const int64_t rows = amx ? blocks.Rows() : s.N;  // of the matmul's operands, per direction
    const int64_t Ie = Padded<M>(s.I), He = amx ? (s.H + 31) / 32 * 32 : Padded<M>(s.H);
    const int64_t K = Ie + He, DNHe = s.D * rows * He;
    const M* panels = PackForward(s, w_ih, w_hh, He, amx);
    // The (D, N, H) states before each step and after the last: step t reads entry t and
    // writes entry t + 1, so a step's work can be run again (see Team) with the same result.
    // Entries an odd number of cache lines apart, the arrays at different offsets in a
    // page: states of consecutive steps and of h and c then fall in different cache sets.
    const int64_t SH = (DNH + 15) / 16 * 16 + 16, SM = (DNHe + 31) / 32 * 32 + 32;
    float* h = Scratch<float>(kHSlot, (s.L + 1) * SH + 256) + 0;
    float* c = Scratch<float>(kCSlot, (s.L + 1) * SH + 256) + 128;
    std::copy(h0, h0 + DNH, h);
    std::copy(c0, c0 + DNH, c);
    // The matmul's operand h: the states themselves, or their (D, rows, He) copies in M
    // (rows past N are never written: see AmxProduct).
    M* hm = nullptr;
    if constexpr (!std::is_same_v<M, float>) {
      hm = Scratch<M>(kHmSlot, (s.L + 1) * SM + 1024) + 768;
      for (int64_t d = 0; d < s.D; ++d)
        for (int64_t n = 0; n < s.N; ++n) {
          M* state = &hm[(d * rows + n) * He];
          for (int64_t unit = 0; unit < s.H; unit += kLanes) {
            const Mask m = UnitMask(unit, s.H);
            StoreBf16(m, state + unit, Load(m, h0 + (d * s.N + n) * s.H + unit));
          }
          for (int64_t t = 0; t <= s.L; ++t)  // the padding columns of every state: zero
            std::fill(state + t * SM + s.H, state + t * SM + He, M{});
        }
    }
    const int64_t items = s.D * tiles;
    const int threads = ThreadsFor(items, 2.0 * s.N * K * G * s.D);
    float* scratch = Scratch<float>(kAccSlot, threads * kPanel * rows);  // accumulators
    const TileConfig tile_config(blocks.height);
    const TileConfig* amx_tiles = amx ? &tile_config : nullptr;
    // Where a thread's share of the panels outgrows its L2 cache, the input part of the
    // products runs for kChunk steps at once (each weight then read once per chunk, not
    // once per step), in a team step of its own: each chunk of scan steps [first, first +
    // kChunk) takes kChunk + 1 team steps, that projection and then the scan steps. The
    // chunk's buffer is reused by the next chunk, so no step may run twice: no backups (a
    // late copy of a projection would overwrite the next chunk's).
    const int64_t panel_bytes = s.D * tiles * K * kPanel * int64_t{sizeof(M)};
    const bool chunked = !amx && panel_bytes / threads > kL2Share;
    const int64_t chunk = chunked ? kChunk : 1, span = chunked ? kChunk + 1 : 1;
    float* projected = chunked ? Scratch<float>(kInputSlot, items * chunk * s.N * kPanel) : nullptr;
    const int64_t team_steps = (s.L + chunk - 1) / chunk * span;
    Team::Run(pool, threads, items, team_steps, !chunked, amx_tiles,
              [&](int64_t item, int64_t k, int thread) {
                const int64_t first = k / span * chunk, count = std::min(chunk, s.L - first);
                const int64_t step = chunked ? first + k % span - 1 : k;
                if (step >= first + count) return;  // the last chunk's missing steps
                const int64_t d = item / tiles, unit = item % tiles * kLanes;
                const M* panel = &panels[item * K * kPanel];
                // The chunk's first time step (the reverse direction runs down from its last).
                const int64_t t_first = d == 0 ? first : s.L - first - count;
                float* xg = chunked ? &projected[item * chunk * s.N * kPanel] : nullptr;
                if (step < first) {  // (count N, I) @ (I, 4 x 16) for this tile's units
                  Product(x + t_first * rows * Ie, Ie, count * s.N, panel, Ie, false, xg);
                  return;
                }
                float* acc = &scratch[thread * kPanel * rows];
                const State in{&h[step * SH], &c[step * SH]};
                const State out{&h[(step + 1) * SH], &c[(step + 1) * SH]};
                const M* a_in;
                M* a_out = nullptr;
                if constexpr (std::is_same_v<M, float>) {
                  a_in = in.h;
                } else {
                  a_in = &hm[step * SM];
                  a_out = &hm[(step + 1) * SM];
                }
                const Mask m = UnitMask(unit, s.H);
                const int64_t t = s.Time(d, step);
                // [x_t | h] @ [w_ih | w_hh]^T for this tile's units: (N, I + H) @ (I + H, 4 x 16)
                const M* x_t = x + t * rows * Ie;
                const M* h_t = a_in + d * rows * He;
                if (chunked) {  // h's part, then the input part's slice (added apart: a backup
                                // may run this step again, so the slice stays as it was)
                  const float* x_part = xg + (t - t_first) * s.N * kPanel;
                  Product(h_t, He, s.N, panel + Ie * kPanel, He, false, acc);
                  for (int64_t i = 0; i < s.N * kPanel; i += kLanes) {
                    StoreU(acc + i, Add(LoadU(acc + i), LoadU(x_part + i)));
                  }
                } else if (!amx) {
                  Product(x_t, Ie, s.N, panel, Ie, false, acc);
                  Product(h_t, He, s.N, panel + Ie * kPanel, He, true, acc);
                } else {
#if defined(JAXLSTM_AVX512)
                  if constexpr (std::is_same_v<M, Bf16>)
                    AmxProduct(blocks.blocks, blocks.height,
                               {{x_t, Ie, panel, Ie}, {h_t, He, panel + Ie * kPanel, He}}, acc);
#endif
                }
                for (int64_t n = 0; n < s.N; ++n) {
                  const Vec h_next = Epilogue(t, d, n, unit, m, &acc[kPanel * n], in, out);
                  if constexpr (!std::is_same_v<M, float>)
                    StoreBf16(m, a_out + (d * rows + n) * He + unit, h_next);
                }
              });
    std::copy(h + s.L * SH, h + s.L * SH + DNH, hn);
    std::copy(c + s.L * SH, c + s.L * SH + DNH, cn);
  }

  struct State {
    float *h, *c;  // (D, N, H)
  };

  // Time t of direction d for 16 units of row n, from its gates' matmul part; returns the
  // new state.
  Vec Epilogue(int64_t t, int64_t d, int64_t n, int64_t unit, Mask m, const float* gates,
               const State& in, const State& out) const {
    const int64_t G = s.G(), row = s.Row(t, n, d), state = (d * s.N + n) * s.H + unit;
    const float* bias = b[d] + unit;
    Vec a[4];
    for (int q = 0; q < 4; ++q) a[q] = Add(LoadU(gates + kLanes * q), Load(m, bias + q * s.H));
    a[0] = Sigmoid(a[0]);
    a[1] = Sigmoid(a[1]);
    a[2] = Tanh(a[2]);
    a[3] = Sigmoid(a[3]);
    const Vec h_old = Load(m, in.h + state), c_old = Load(m, in.c + state);
    const Vec c_new = Fma(a[1], c_old, Mul(a[0], a[2]));
    const Vec h_new = Mul(a[3], Tanh(c_new));
    const bool keep = t < lengths[n];  // past its length a sequence's state is frozen
    const Vec h_next = keep ? h_new : h_old, c_next = keep ? c_new : c_old;
    Store(m, out.h + state, h_next);
    Store(m, out.c + state, c_next);
    Store(m, ys + row * s.H + unit, keep ? h_new : Zero());
    if (acts[0] != nullptr) {
      const int64_t res = s.Residual(t, n);
      for (int q = 0; q < 4; ++q) Store(m, acts[d] + res * G + q * s.H + unit, a[q]);
      Store(m, cs[d] + res * s.H + unit, c_next);
      if constexpr (std::is_same_v<M, float>) {
        Store(m, hp[d] + res * s.H + unit, h_old);
      } else {
        StoreBf16(m, hp[d] + res * s.H + unit, h_old);
      }
    }
    return h_next;
  }
};

}  // namespace jaxlstm::JAXLSTM_ISA
