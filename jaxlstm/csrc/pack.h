// The weights packed into panels (layout.h) for the step matmuls (include after simd.h;
// compiled in the instruction set's namespace).

namespace jaxlstm::JAXLSTM_ISA {

// The lanes of 16 hidden units from `first` that are below `hidden`.
inline Mask UnitMask(int64_t first, int64_t hidden) {
  return Lanes(std::clamp<int64_t>(hidden - first, 0, kLanes));
}

// Writes 16 columns of kPack<M> rows of a row-major source (src: the first column of row
// k; ld: its row stride) as a panel holds them (the k of a pair adjacent), the columns
// outside m and the rows from `rows` on as zeros (bfloat16: simd_avx512.h).
inline void PackUnit(const float* src, int64_t ld, int64_t k, int64_t rows, Mask m, float* dst) {
  StoreU(dst, k < rows ? Load(m, src) : Zero());
}

// Forward panels: for direction d and 16-unit tile u, the rows k < Ie + He (the input size
// padded to whole packed rows, the hidden size padded to He) of one tile's four gates side
// by side, W[k][gate * 16 + lane] = [w_ih | w_hh][d][gate * H + 16 u + lane][k] (zero past
// H), from w_ih[d] (G, Ie) and w_hh[d] (G, H) as they are (16 x 16 blocks transposed).
template <typename M>
const M* PackForward(const Shape& s, const M* const w_ih[2], const M* const w_hh[2], int64_t He,
                     bool amx) {
  const int64_t tiles = (s.H + kLanes - 1) / kLanes;
  const int64_t Ie = Padded<M>(s.I), K = Ie + He, size = s.D * tiles * K * kPanel;
  const int64_t block = 16 * kPack<M>;  // source elements of 16 packed rows
  M* packed = Scratch<M>(kPanelsSlot, size);
  for (int64_t d = 0; d < s.D; ++d)
    for (int64_t u = 0; u < tiles; ++u) {
      M* panel = packed + (d * tiles + u) * K * kPanel;
      const int64_t lanes = std::min<int64_t>(kLanes, s.H - u * kLanes);
      for (int gate = 0; gate < 4; ++gate) {
        const int64_t g = gate * s.H + u * kLanes;  // the first source row
        auto x_part = [&](int64_t p) { return panel + PanelOffset<M>(amx, p, gate); };
        auto h_part = [&](int64_t p) { return x_part(Ie / kPack<M> + p); };
        for (int64_t k0 = 0; k0 < Ie; k0 += block) {
          PackBlock(w_ih[d] + g * Ie, Ie, lanes, k0, Ie, k0 / kPack<M>, Ie / kPack<M>, x_part);
        }
        for (int64_t k0 = 0; k0 < He; k0 += block) {
          PackBlock(w_hh[d] + g * s.H, s.H, lanes, k0, s.H, k0 / kPack<M>, He / kPack<M>, h_part);
        }
      }
    }
  return packed;
}

// Backward panels: for direction d and 64-unit tile v, W[k][lane] = w_hh[d][k][64 v + lane]
// for k < G (zero past H).
template <typename M>
const M* PackBackward(const Shape& s, const M* const w_hh[2], bool amx) {
  const int64_t tiles = (s.H + kPanel - 1) / kPanel, G = s.G(), size = s.D * tiles * G * kPanel;
  M* packed = Scratch<M>(kPanelsSlot, size);
  for (int64_t d = 0; d < s.D; ++d)
    for (int64_t v = 0; v < tiles; ++v) {
      M* panel = packed + (d * tiles + v) * G * kPanel;
      for (int64_t k = 0; k < G; k += kPack<M>)
        for (int q = 0; q < 4; ++q) {
          const int64_t unit = v * kPanel + q * kLanes;
          PackUnit(w_hh[d] + k * s.H + unit, s.H, k, G, UnitMask(unit, s.H),
                   panel + PanelOffset<M>(amx, k / kPack<M>, q));
        }
    }
  return packed;
}

}  // namespace jaxlstm::JAXLSTM_ISA
