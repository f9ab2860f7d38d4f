// The fused LSTM recurrence for x86-64 CPUs with AVX-512: XLA FFI custom calls.
//
// What they compute is jaxlstm._scan.scan_layer and the loop of its reverse mode
// (float32, no projection, every direction of a layer at once): each step's gate matmul
// [x_t | h] @ [w_ih | w_hh]^T with the gate nonlinearities, the cell update and the length masks
// done on the matmul's accumulators while they are in registers, the hidden units shared out over
// the calling thread and XLA's intra-op threads, the steps in order. jaxlstm/_kernel.py holds the
// rest of the layer (input and weight gradients) and the contract.
//
// Layouts (row-major; L steps in time order, N batch, D directions, H hidden, G = 4H;
// direction 1 runs from its sequence's end, t = L - 1 down to 0; steps at t >= lengths[n]
// leave the state unchanged and output zeros):
//   forward  in : x (L,N,I), per direction d < 2 (empty for d >= D) w_ih_d (G,I), then
//                 b_d (G) = b_ih + b_hh, then w_hh_d (G,H); h0 (D,N,H), c0 (D,N,H), lengths
//                 (N) int32
//            out: ys (L,N,D,H), h_n (D,N,H), c_n (D,N,H), then for reverse mode (else
//                 empty) per direction d < 2 (empty for d >= D): acts_d (L,N,G) activated
//                 gates, cs_d (L,N,H) cell states after each step, hp_d (L,N,H) hidden
//                 states before each step (in the matmul dtype: the weight gradient's operand)
//   backward in : d_ys (L,N,D,H), acts_0, acts_1, cs_0, cs_1, w_hh_0, w_hh_1, c0, lengths,
//                 d_hn (D,N,H), d_cn (D,N,H)
//            out: dgates_0, dgates_1 (L,N,G) (may alias acts_0, acts_1), dh0 (D,N,H),
//                 dc0 (D,N,H)
// The weights, the residuals and the gate cotangents are arrays of their own per
// direction: the parameters go in as they are, and each direction's input and weight
// gradients are products of whole arrays (XLA copies a slice of an array holding both
// directions out before a product reads it, and stacks the parameters into a new one).

#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <immintrin.h>
#include <sched.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <cstring>
#include <initializer_list>
#include <memory>
#include <new>
#include <thread>
#include <type_traits>
#include <vector>

#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

constexpr int kLanes = 16;          // floats in a 512-bit register
constexpr int kPanel = 4 * kLanes;  // columns of one packed weight panel
constexpr int kRows = 6;            // batch rows per register tile: 6 x 4 accumulators

// Waits until ready() holds: spinning (a step takes tens of microseconds), then yielding
// the core in case the thread waited for is not running (more threads than cores).
template <typename Ready>
void WaitUntil(const Ready& ready) {
  for (int spins = 0; !ready(); ++spins) {
    if (spins < 2000) {
      _mm_pause();
    } else {
      std::this_thread::yield();
    }
  }
}

// AMX: the tile registers' shapes, which a thread loads before it multiplies with them
// (palette 1: eight tiles of up to 16 rows of 64 bytes). The products (AmxProduct) use
// tiles 0-3 for float32 sums of up to 16 rows by 16 columns, 4 and 5 for 32 k of up to 16
// rows of the left operand (bfloat16), 6 and 7 for 32 x 16 blocks of the weights (16 rows
// of pairs along k, as the panels hold them).
struct alignas(64) TileConfig {
  uint8_t palette = 1, start_row = 0, reserved[14] = {};
  uint16_t bytes[16] = {};  // per tile: bytes per row
  uint8_t rows[16] = {};

  // For row blocks of `height` (<= 16) rows.
  explicit TileConfig(int64_t height) {
    for (int tile = 0; tile < 8; ++tile) {
      bytes[tile] = 64;
      rows[tile] = tile < 6 ? static_cast<uint8_t>(height) : 16;
    }
  }
};

__attribute__((target("amx-tile"))) void LoadTiles(const TileConfig& tiles) {
  _tile_loadconfig(&tiles);
}

// Gives the tiles back (their state then costs nothing at context switches).
__attribute__((target("amx-tile"))) void ReleaseTiles() { _tile_release(); }

// Whether this process may use AMX's bfloat16 tiles: the CPU has them and Linux grants
// their state (a process asks once; the answer holds for all its threads).
bool AmxGranted() {
  constexpr long kRequestPermission = 0x1023, kTileData = 18;  // ARCH_REQ_XCOMP_PERM
  __builtin_cpu_init();
  return __builtin_cpu_supports("amx-tile") && __builtin_cpu_supports("amx-bf16") &&
         syscall(SYS_arch_prctl, kRequestPermission, kTileData) == 0;
}

// Runs work(item, step, thread) for every item in [0, items) and step in [0, steps), all
// items of a step before any of the next, on the calling thread and on up to threads - 1
// tasks scheduled on XLA's intra-op thread pool (`thread` < threads names the running
// thread's scratch space).
//
// Thread t starts each step at its own share of the items (keeping its weights in its own
// cache) and goes on to any item of the step that nobody has started: the call never
// waits for a thread that is busy elsewhere or never comes; the caller alone finishes the
// work if it must. With `backups` (work whose items may run twice: same inputs, same
// outputs), a thread that has waited several item-times for the last items of a step runs
// them itself: a thread descheduled in the middle of an item (another process's threads
// on the same cores) then holds nobody up. Helpers that start late find the steps done
// and leave; the call returns once no thread is inside, and the shared state outlives it.
// With `tiles`, each thread configures its AMX tiles so, and releases them when it leaves.
class Team {
 public:
  template <typename Work>
  static void Run(ffi::ThreadPool& pool, int threads, int64_t items, int64_t steps, bool backups,
                  const TileConfig* tiles, const Work& work) {
    if (threads == 1) {  // no one to share with: the plain loop
      if (tiles != nullptr) LoadTiles(*tiles);
      for (int64_t step = 0; step < steps; ++step)
        for (int64_t item = 0; item < items; ++item) work(item, step, 0);
      if (tiles != nullptr) ReleaseTiles();
      return;
    }
    auto team = std::make_shared<Team>(threads, items, steps, backups, tiles);
    team->work_ = &work;
    team->call_ = [](const void* w, int64_t item, int64_t step, int thread) {
      (*static_cast<const Work*>(w))(item, step, thread);
    };
    for (int helper = 1; helper < threads; ++helper) {
      pool.Schedule([team, helper] { team->Join(helper); });
    }
    team->Join(0);
    team->finished_.store(true);
    WaitUntil([&] { return team->inside_.load() == 0; });
  }

  Team(int threads, int64_t items, int64_t steps, bool backups, const TileConfig* tiles)
      : threads_(threads),
        items_(items),
        steps_(steps),
        backups_(backups),
        tiles_(tiles),
        next_(new std::atomic<int64_t>[items]),
        done_(new std::atomic<int64_t>[items]) {
    for (int64_t i = 0; i < items; ++i) {
      next_[i].store(0);
      done_[i].store(0);
    }
  }

 private:
  // Backups wait this many cycles past three of the thread's own item-times (~3.5 us).
  static constexpr uint64_t kPatience = 12000;

  void Join(int thread) {
    inside_.fetch_add(1);
    if (!finished_.load()) {
      if (tiles_ != nullptr) LoadTiles(*tiles_);
      const int64_t start = items_ * thread / threads_;
      uint64_t item_cycles = 0;  // a running mean of this thread's item durations
      for (int64_t step = Completed(); step < steps_; ++step) {
        for (int64_t k = 0; k < items_; ++k) {
          const int64_t item = (start + k) % items_;
          int64_t expected = step;
          if (next_[item].load(std::memory_order_relaxed) == step &&
              next_[item].compare_exchange_strong(expected, step + 1)) {
            Execute(item, step, thread, item_cycles);
          }
        }
        uint64_t since = __rdtsc();
        for (int spins = 0; Completed() <= step; ++spins) {
          if (backups_ && __rdtsc() - since > 3 * item_cycles + kPatience) {
            for (int64_t item = 0; item < items_; ++item) {
              if (done_[item].load() == step) Execute(item, step, thread, item_cycles);
            }
            since = __rdtsc();
          } else if (spins < 2000 || backups_) {
            _mm_pause();
          } else {
            std::this_thread::yield();
          }
        }
      }
      if (tiles_ != nullptr) ReleaseTiles();
    }
    inside_.fetch_sub(1);
  }

  void Execute(int64_t item, int64_t step, int thread, uint64_t& item_cycles) {
    const uint64_t begin = __rdtsc();
    call_(work_, item, step, thread);
    item_cycles = (3 * item_cycles + (__rdtsc() - begin)) / 4;
    int64_t done = done_[item].load();
    while (done < step + 1 && !done_[item].compare_exchange_weak(done, step + 1)) {
    }
  }

  // The number of steps every item has finished.
  int64_t Completed() const {
    int64_t least = steps_;
    for (int64_t i = 0; i < items_; ++i) least = std::min(least, done_[i].load());
    return least;
  }

  const int threads_;
  const int64_t items_, steps_;
  const bool backups_;
  const TileConfig* tiles_;  // the AMX tiles each thread configures, or nullptr
  std::unique_ptr<std::atomic<int64_t>[]> next_;  // per item: the next step to start
  std::unique_ptr<std::atomic<int64_t>[]> done_;  // per item: the steps finished
  std::atomic<int> inside_{0};                    // threads inside Join
  std::atomic<bool> finished_{false};
  const void* work_ = nullptr;
  void (*call_)(const void*, int64_t, int64_t, int) = nullptr;
};

int CpuCount() {
  cpu_set_t set;
  if (sched_getaffinity(0, sizeof(set), &set) == 0) return std::max(1, CPU_COUNT(&set));
  return std::max(1u, std::thread::hardware_concurrency());
}

// Threads worth using for `items` independent work items, `flops` in all per step:
// handing a step over between threads costs about a microsecond, so steps of less than
// 0.2 MFLOP a thread stay on fewer threads (measured: T=1000 N=8 H=128, 1 MFLOP a step,
// runs 1.2x faster on two threads than on one).
int ThreadsFor(int64_t items, double flops_per_step) {
  const int by_work = static_cast<int>(std::max(1.0, flops_per_step / 2.0e5));
  return static_cast<int>(
      std::max<int64_t>(1, std::min<int64_t>({int64_t{CpuCount()}, items, int64_t{by_work}})));
}

#pragma GCC push_options
#pragma GCC target("avx512f,avx512dq,avx512bw,avx512vl,avx512bf16,fma")

inline __m512 Set(float v) { return _mm512_set1_ps(v); }

// exp(x) to about 1 ulp (Cephes' expf polynomial), x clamped to float's range; NaN stays
// NaN (min/max return their second operand when either is NaN).
inline __m512 Exp(__m512 x) {
  x = _mm512_max_ps(Set(-87.33654f), _mm512_min_ps(Set(88.37626f), x));
  const __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, Set(1.44269504088896341f)),
                                        _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m512 r = _mm512_fnmadd_ps(n, Set(0.693359375f), x);
  r = _mm512_fnmadd_ps(n, Set(-2.12194440e-4f), r);
  __m512 p = Set(1.9875691500e-4f);
  p = _mm512_fmadd_ps(p, r, Set(1.3981999507e-3f));
  p = _mm512_fmadd_ps(p, r, Set(8.3334519073e-3f));
  p = _mm512_fmadd_ps(p, r, Set(4.1665795894e-2f));
  p = _mm512_fmadd_ps(p, r, Set(1.6666665459e-1f));
  p = _mm512_fmadd_ps(p, r, Set(5.0000001201e-1f));
  p = _mm512_fmadd_ps(p, _mm512_mul_ps(r, r), _mm512_add_ps(r, Set(1.0f)));
  return _mm512_scalef_ps(p, n);
}

// 1 / d for d >= 1: the 14-bit estimate and one Newton step (relative error ~2^-28, below
// float rounding), cheaper than a division.
inline __m512 Reciprocal(__m512 d) {
  const __m512 r = _mm512_rcp14_ps(d);
  return _mm512_mul_ps(r, _mm512_fnmadd_ps(d, r, Set(2.0f)));
}

inline __m512 Sigmoid(__m512 x) {
  return Reciprocal(_mm512_add_ps(Set(1.0f), Exp(_mm512_sub_ps(Set(0.0f), x))));
}

// tanh(x): an odd polynomial below |x| = 0.625 (Cephes' tanhf), 1 - 2 / (exp(2|x|) + 1)
// above, the sign restored.
inline __m512 Tanh(__m512 x) {
  const __m512 ax = _mm512_abs_ps(x);
  const __m512 s = _mm512_mul_ps(x, x);
  __m512 p = Set(-5.70498872745e-3f);
  p = _mm512_fmadd_ps(p, s, Set(2.06390887954e-2f));
  p = _mm512_fmadd_ps(p, s, Set(-5.37397155531e-2f));
  p = _mm512_fmadd_ps(p, s, Set(1.33314422036e-1f));
  p = _mm512_fmadd_ps(p, s, Set(-3.33332819422e-1f));
  const __m512 small = _mm512_fmadd_ps(_mm512_mul_ps(p, s), x, x);
  const __m512 e = Exp(_mm512_add_ps(ax, ax));
  __m512 large = _mm512_fnmadd_ps(Set(2.0f), Reciprocal(_mm512_add_ps(e, Set(1.0f))), Set(1.0f));
  large = _mm512_castsi512_ps(
      _mm512_or_si512(_mm512_castps_si512(large),
                      _mm512_and_si512(_mm512_castps_si512(x), _mm512_set1_epi32(INT32_MIN))));
  return _mm512_mask_blend_ps(_mm512_cmp_ps_mask(ax, Set(0.625f), _CMP_LT_OQ), large, small);
}

// The matmul operands: float32, or bfloat16 (bits) multiplied in pairs along k by
// AVX512_BF16's dot product into float32 sums. A panel row holds kPack<M> values of k for
// each of its 64 columns, adjacent: panel[(k / kPack) * 64 * kPack + col * kPack + k % kPack].
struct Bf16 {
  uint16_t bits;
};
template <typename M>
constexpr int64_t kPack = sizeof(float) / sizeof(M);

// sums += a (the k-pair or value at a, broadcast) * b (one 16-column row of a panel).
inline __m512 Mac(__m512 sums, const float* a, const float* b) {
  return _mm512_fmadd_ps(_mm512_set1_ps(*a), _mm512_loadu_ps(b), sums);
}
inline __m512 Mac(__m512 sums, const Bf16* a, const Bf16* b) {
  int32_t pair;
  std::memcpy(&pair, a, sizeof(pair));
  return _mm512_dpbf16_ps(sums, (__m512bh)_mm512_set1_epi32(pair), (__m512bh)_mm512_loadu_si512(b));
}

// acc[64 r + 16 q + lane] (+)= sum_k a[r * lda + k] * W[k][16 q + lane] for R rows of a,
// W a panel of `rows` packed rows. The sums are kept in local registers (acc may alias
// memory the loop reads). One or two rows give too few independent sums to hide the
// multiply-add latency; they get two banks of sums, over even and odd packed rows.
template <int R, typename M>
inline void Gemm(const M* a, int64_t lda, const M* panel, int64_t rows, bool add, float* acc) {
  constexpr int kBanks = R <= 2 ? 2 : 1;
  constexpr int64_t kRow = kPanel * kPack<M>, kQ = kLanes * kPack<M>;
  __m512 c[kBanks][R][4];
#pragma GCC unroll 2
  for (int bank = 0; bank < kBanks; ++bank)
#pragma GCC unroll 6
    for (int r = 0; r < R; ++r)
#pragma GCC unroll 4
      for (int q = 0; q < 4; ++q)
        c[bank][r][q] =
            add && bank == 0 ? _mm512_loadu_ps(acc + kPanel * r + kLanes * q) : _mm512_setzero_ps();
  auto step = [&](int64_t p, __m512(&sums)[R][4]) {
    const M* row = panel + p * kRow;
#pragma GCC unroll 6
    for (int r = 0; r < R; ++r) {
      const M* ar = a + r * lda + p * kPack<M>;
#pragma GCC unroll 4
      for (int q = 0; q < 4; ++q) sums[r][q] = Mac(sums[r][q], ar, row + q * kQ);
    }
  };
  int64_t p = 0;
  for (; p + kBanks <= rows; p += kBanks)
#pragma GCC unroll 2
    for (int bank = 0; bank < kBanks; ++bank) step(p + bank, c[bank]);
  for (; p < rows; ++p) step(p, c[0]);
#pragma GCC unroll 6
  for (int r = 0; r < R; ++r)
#pragma GCC unroll 4
    for (int q = 0; q < 4; ++q) {
      __m512 sum = c[0][r][q];
      for (int bank = 1; bank < kBanks; ++bank) sum = _mm512_add_ps(sum, c[bank][r][q]);
      _mm512_storeu_ps(acc + kPanel * r + kLanes * q, sum);
    }
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
      const M* a0 = a + n0 * lda + p0 * kPack<M>;
      float* c = acc + kPanel * n0;
      n0 += height;
      const bool more = add || p0 > 0;
      switch (height) {
        case 1:
          Gemm<1>(a0, lda, block, depth, more, c);
          break;
        case 2:
          Gemm<2>(a0, lda, block, depth, more, c);
          break;
        case 3:
          Gemm<3>(a0, lda, block, depth, more, c);
          break;
        case 4:
          Gemm<4>(a0, lda, block, depth, more, c);
          break;
        case 5:
          Gemm<5>(a0, lda, block, depth, more, c);
          break;
        default:
          Gemm<6>(a0, lda, block, depth, more, c);
          break;
      }
    }
  }
}

// acc[64 n + 16 q + lane] = sum over the segments (a, lda, panel, k) of sum_k a[n * lda + k]
// * W[k][16 q + lane], for n < blocks * height (the tiles' configured height): AMX's
// bfloat16 tile products, the sums in tiles until the end, the panels in tile order
// (PanelOffset). A segment's k is a multiple of 32 (a tile of weights); its rows past the
// caller's may hold anything that is readable (each row of sums depends on its own row of
// a only).
struct Segment {
  const Bf16* a;
  int64_t lda;
  const Bf16* panel;
  int64_t k;
};

// The weights' tile of quarter q for k in [k0, k0 + 32), 16 rows of 64 bytes.
inline const Bf16* WeightTile(const Bf16* panel, int64_t k0, int64_t q) {
  return panel + (k0 / 32 * 4 + q) * 16 * kLanes * 2;
}

// Tiles 0-3 (the sums) = 0.
__attribute__((target("amx-tile"))) inline void ZeroSums() {
  _tile_zero(0);
  _tile_zero(1);
  _tile_zero(2);
  _tile_zero(3);
}

__attribute__((target("avx512f,avx512bw,amx-tile,amx-bf16"))) void AmxProduct(
    int64_t blocks, int64_t height, std::initializer_list<Segment> segments, float* acc) {
  constexpr int64_t kTileRow = kLanes * 2 * sizeof(Bf16), kAccRow = kPanel * sizeof(float);
  int64_t block = 0;
  // Two row blocks at a time, half the columns at a time: tiles 0-3 hold the sums of 2 x 2
  // (16 rows, 16 columns) blocks, 4 and 5 the rows of a, 6 and 7 the weights, each of
  // which serves both row blocks (the weights, which come from the L2 cache, are loaded
  // once per step).
  for (; block + 2 <= blocks; block += 2) {
    for (int64_t half = 0; half < 2; ++half) {
      ZeroSums();
      for (const Segment& g : segments) {
        const Bf16* a = g.a + block * height * g.lda;
        const int64_t stride = g.lda * sizeof(Bf16);
        for (int64_t k = 0; k < g.k; k += 32) {
          const Bf16* w = WeightTile(g.panel, k, 2 * half);
          _tile_loadd(4, a + k, stride);
          _tile_loadd(6, w, kTileRow);
          _tile_dpbf16ps(0, 4, 6);
          _tile_loadd(5, a + height * g.lda + k, stride);
          _tile_dpbf16ps(2, 5, 6);
          _tile_loadd(7, w + 16 * kLanes * 2, kTileRow);
          _tile_dpbf16ps(1, 4, 7);
          _tile_dpbf16ps(3, 5, 7);
        }
      }
      float* c = acc + block * height * kPanel + half * 2 * kLanes;
      _tile_stored(0, c, kAccRow);
      _tile_stored(1, c + kLanes, kAccRow);
      _tile_stored(2, c + height * kPanel, kAccRow);
      _tile_stored(3, c + height * kPanel + kLanes, kAccRow);
    }
  }
  // A last (or only) row block: tiles 0-3 hold its four quarters, 4 its rows of a, 6 and 7
  // the weights in turn.
  for (; block < blocks; ++block) {
    ZeroSums();
    for (const Segment& g : segments) {
      const Bf16* a = g.a + block * height * g.lda;
      for (int64_t k = 0; k < g.k; k += 32) {
        _tile_loadd(4, a + k, g.lda * sizeof(Bf16));
        _tile_loadd(6, WeightTile(g.panel, k, 0), kTileRow);
        _tile_dpbf16ps(0, 4, 6);
        _tile_loadd(7, WeightTile(g.panel, k, 1), kTileRow);
        _tile_dpbf16ps(1, 4, 7);
        _tile_loadd(6, WeightTile(g.panel, k, 2), kTileRow);
        _tile_dpbf16ps(2, 4, 6);
        _tile_loadd(7, WeightTile(g.panel, k, 3), kTileRow);
        _tile_dpbf16ps(3, 4, 7);
      }
    }
    float* c = acc + block * height * kPanel;
    _tile_stored(0, c, kAccRow);
    _tile_stored(1, c + kLanes, kAccRow);
    _tile_stored(2, c + 2 * kLanes, kAccRow);
    _tile_stored(3, c + 3 * kLanes, kAccRow);
  }
}

// k rounded up to whole packed rows.
template <typename M>
constexpr int64_t Padded(int64_t k) {
  return (k + kPack<M> - 1) / kPack<M> * kPack<M>;
}

// 16 float32 values as bfloat16 bits (round to nearest even, as XLA converts), stored
// under mask m.
inline void StoreBf16(__mmask16 m, Bf16* p, __m512 v) {
  _mm256_mask_storeu_epi16(p, m, (__m256i)_mm512_cvtneps_pbh(v));
}

inline __mmask16 UnitMask(int64_t first, int64_t hidden) {
  const int64_t n = std::clamp<int64_t>(hidden - first, 0, kLanes);
  return static_cast<__mmask16>((1u << n) - 1u);
}

// Asks for the cache line holding p now: the backward epilogues' inputs (residuals) come
// from memory and are fetched while the item's matmul runs.
inline void Prefetch(const float* p) {
  _mm_prefetch(reinterpret_cast<const char*>(p), _MM_HINT_T0);
}

inline __m512 Load(__mmask16 m, const float* p) { return _mm512_maskz_loadu_ps(m, p); }
inline void Store(__mmask16 m, float* p, __m512 v) { _mm512_mask_storeu_ps(p, m, v); }

struct Shape {
  int64_t L, N, D, H, I;  // I: input size
  int64_t G() const { return 4 * H; }
  // Time step of direction d at scan step `step` (the reverse direction runs backwards).
  int64_t Time(int64_t d, int64_t step) const { return d == 0 ? step : L - 1 - step; }
  // Row of (time t, batch n, direction d) in the (L, N, D, ...) arrays.
  int64_t Row(int64_t t, int64_t n, int64_t d) const { return (t * N + n) * D + d; }
  // Row of (time t, batch n) in a direction's (L, N, ...) residuals.
  int64_t Residual(int64_t t, int64_t n) const { return t * N + n; }
};

// Memory for one call, kept for the next call of the same (calling) thread: allocating
// megabytes per call costs page faults on every call, as glibc gives large blocks back to
// the system when they are freed. Slot tells the buffers of a call apart.
enum Slot { kPanelsSlot, kHSlot, kCSlot, kHmSlot, kAccSlot, kCopySlot, kInputSlot };
// The memory starts on a cache line: a 64-byte load (a vector, a tile's row) from a
// misaligned panel touches two lines (measured: AMX steps 2.5x slower).
template <typename T, Slot>
T* Reused(int64_t n) {
  constexpr uintptr_t kLine = 64;
  static thread_local std::vector<T> cache;
  const size_t size = static_cast<size_t>(n) + kLine / sizeof(T);
  if (cache.size() < size) cache.resize(size);
  const auto address = reinterpret_cast<uintptr_t>(cache.data());
  return reinterpret_cast<T*>((address + kLine - 1) & ~(kLine - 1));
}

// Where 16 columns (quarter q of 64) of packed row p start in a panel: row after row, or
// for AMX in tile order (tiles of 16 packed rows by 16 columns, 1 KB each, the four
// quarters of 16 packed rows after one another).
template <typename M>
int64_t PanelOffset(bool amx, int64_t p, int64_t q) {
  constexpr int64_t kUnit = kLanes * kPack<M>;
  return amx ? ((p / 16 * 4 + q) * 16 + p % 16) * kUnit : (p * 4 + q) * kUnit;
}

// Writes 16 columns of kPack<M> rows of a row-major source (src: the first column of row
// k; ld: its row stride) as a panel holds them (the k of a pair adjacent), the columns
// outside m and the rows from `rows` on as zeros.
inline void PackUnit(const float* src, int64_t ld, int64_t k, int64_t rows, __mmask16 m,
                     float* dst) {
  _mm512_storeu_ps(dst, k < rows ? _mm512_maskz_loadu_ps(m, src) : _mm512_setzero_ps());
}
inline void PackUnit(const Bf16* src, int64_t ld, int64_t k, int64_t rows, __mmask16 m, Bf16* dst) {
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
  const __mmask16 m = static_cast<__mmask16>(count >= 16 ? 0xffff : (1u << count) - 1u);
  return _mm512_castps_si512(_mm512_maskz_loadu_ps(m, row));
}
inline __m512i LoadRow(const Bf16* row, int64_t count) {
  const __mmask32 m = count >= 32 ? 0xffffffffu : (uint32_t{1} << count) - 1u;
  return _mm512_maskz_loadu_epi16(m, row);
}

// Writes the panel units of 16 columns (source rows: src, stride ld, the first `lanes` of
// them real, the rest zero) for the packed rows [p0, p0 + 16) whose source elements are
// [k0, k0 + 16 kPack) of each row (zero from `k_end` on), through dst(p).
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
  M* packed = Reused<M, kPanelsSlot>(size);
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
  M* packed = Reused<M, kPanelsSlot>(size);
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

// The rows of the AMX products: N rows as `blocks` blocks of `height` <= 16 rows (the
// operands' rows padded to blocks * height).
struct RowBlocks {
  int64_t height, blocks;
  explicit RowBlocks(int64_t n)
      : height(std::min<int64_t>(16, n)), blocks((n + height - 1) / height) {}
  int64_t Rows() const { return height * blocks; }
};

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

  void Run(ffi::ThreadPool& pool) const {
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
    float* h = Reused<float, kHSlot>((s.L + 1) * SH + 256) + 0;
    float* c = Reused<float, kCSlot>((s.L + 1) * SH + 256) + 128;
    std::copy(h0, h0 + DNH, h);
    std::copy(c0, c0 + DNH, c);
    // The matmul's operand h: the states themselves, or their (D, rows, He) copies in M
    // (rows past N are never written: see AmxProduct).
    M* hm = nullptr;
    if constexpr (!std::is_same_v<M, float>) {
      hm = Reused<M, kHmSlot>((s.L + 1) * SM + 1024) + 768;
      for (int64_t d = 0; d < s.D; ++d)
        for (int64_t n = 0; n < s.N; ++n) {
          M* state = &hm[(d * rows + n) * He];
          for (int64_t unit = 0; unit < s.H; unit += kLanes) {
            const __mmask16 m = UnitMask(unit, s.H);
            StoreBf16(m, state + unit, Load(m, h0 + (d * s.N + n) * s.H + unit));
          }
          for (int64_t t = 0; t <= s.L; ++t)  // the padding columns of every state: zero
            std::fill(state + t * SM + s.H, state + t * SM + He, M{});
        }
    }
    const int64_t items = s.D * tiles;
    const int threads = ThreadsFor(items, 2.0 * s.N * K * G * s.D);
    float* scratch = Reused<float, kAccSlot>(threads * kPanel * rows);  // accumulators
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
    float* projected = chunked ? Reused<float, kInputSlot>(items * chunk * s.N * kPanel) : nullptr;
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
                const __mmask16 m = UnitMask(unit, s.H);
                const int64_t t = s.Time(d, step);
                // [x_t | h] @ [w_ih | w_hh]^T for this tile's units: (N, I + H) @ (I + H, 4 x 16)
                const M* x_t = x + t * rows * Ie;
                const M* h_t = a_in + d * rows * He;
                if (chunked) {  // h's part, then the input part's slice (added apart: a backup
                                // may run this step again, so the slice stays as it was)
                  const float* x_part = xg + (t - t_first) * s.N * kPanel;
                  Product(h_t, He, s.N, panel + Ie * kPanel, He, false, acc);
                  for (int64_t i = 0; i < s.N * kPanel; i += kLanes) {
                    _mm512_storeu_ps(acc + i, _mm512_add_ps(_mm512_loadu_ps(acc + i),
                                                            _mm512_loadu_ps(x_part + i)));
                  }
                } else if (!amx) {
                  Product(x_t, Ie, s.N, panel, Ie, false, acc);
                  Product(h_t, He, s.N, panel + Ie * kPanel, He, true, acc);
                } else if constexpr (std::is_same_v<M, Bf16>) {
                  AmxProduct(blocks.blocks, blocks.height,
                             {{x_t, Ie, panel, Ie}, {h_t, He, panel + Ie * kPanel, He}}, acc);
                }
                for (int64_t n = 0; n < s.N; ++n) {
                  const __m512 h_next = Epilogue(t, d, n, unit, m, &acc[kPanel * n], in, out);
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
  __m512 Epilogue(int64_t t, int64_t d, int64_t n, int64_t unit, __mmask16 m, const float* gates,
                  const State& in, const State& out) const {
    const int64_t G = s.G(), row = s.Row(t, n, d), state = (d * s.N + n) * s.H + unit;
    const float* bias = b[d] + unit;
    __m512 a[4];
    for (int q = 0; q < 4; ++q)
      a[q] = _mm512_add_ps(_mm512_loadu_ps(gates + kLanes * q), Load(m, bias + q * s.H));
    a[0] = Sigmoid(a[0]);
    a[1] = Sigmoid(a[1]);
    a[2] = Tanh(a[2]);
    a[3] = Sigmoid(a[3]);
    const __m512 h_old = Load(m, in.h + state), c_old = Load(m, in.c + state);
    const __m512 c_new = _mm512_fmadd_ps(a[1], c_old, _mm512_mul_ps(a[0], a[2]));
    const __m512 h_new = _mm512_mul_ps(a[3], Tanh(c_new));
    const bool keep = t < lengths[n];  // past its length a sequence's state is frozen
    const __m512 h_next = keep ? h_new : h_old, c_next = keep ? c_new : c_old;
    Store(m, out.h + state, h_next);
    Store(m, out.c + state, c_next);
    Store(m, ys + row * s.H + unit, keep ? h_new : _mm512_setzero_ps());
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

  void Run(ffi::ThreadPool& pool) {
    const int64_t tiles = (s.H + kPanel - 1) / kPanel, G = s.G(), DNH = s.D * s.N * s.H;
    const RowBlocks blocks(s.N);
    rows = amx ? blocks.Rows() : s.N;
    const M* panels = PackBackward(s, w_hh, amx);
    // The matmul's operand: the gate cotangents themselves, or (rows, D, G) copies in M of
    // the last two steps' (step s in copy s % 2; rows past N are never written).
    if constexpr (!std::is_same_v<M, float>) gm = Reused<M, kCopySlot>(2 * rows * s.D * G);
    // dh0 holds the part of dh that passes frozen (masked) steps; dc0 the cell cotangent.
    std::copy(d_hn, d_hn + DNH, dh0);
    std::copy(d_cn, d_cn + DNH, dc0);
    const int64_t items = s.D * tiles;
    const int threads = ThreadsFor(items, 2.0 * s.N * s.H * G * s.D);
    float* scratch = Reused<float, kAccSlot>(threads * kPanel * rows);  // accumulators
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
                  } else if constexpr (std::is_same_v<M, Bf16>) {
                    AmxProduct(blocks.blocks, blocks.height, {{a, lda, panel, G}}, acc);
                  }
                } else {
                  std::fill(acc, acc + kPanel * s.N, 0.0f);
                }
                for (int64_t n = 0; n < s.N; ++n)
                  for (int q = 0; q < 4; ++q) {
                    const int64_t unit = v * kPanel + q * kLanes;
                    if (unit >= s.H) break;
                    const __mmask16 m = UnitMask(unit, s.H);
                    const int64_t state = (d * s.N + n) * s.H + unit;
                    const __m512 dh = _mm512_add_ps(_mm512_loadu_ps(&acc[kPanel * n + kLanes * q]),
                                                    Load(m, dh0 + state));
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
  void Epilogue(int64_t step, int64_t d, int64_t n, int64_t unit, __mmask16 m, __m512 dh) {
    const int64_t G = s.G(), t = s.Time(d, step), res = s.Residual(t, n);
    const int64_t state = (d * s.N + n) * s.H + unit;
    float* dg = dgates[d] + res * G + unit;
    const int64_t copy = ((step % 2) * rows * s.D + n * s.D + d) * G + unit;  // in gm
    auto put = [&](int q, __m512 v) {
      Store(m, dg + q * s.H, v);
      if constexpr (!std::is_same_v<M, float>) StoreBf16(m, gm + copy + q * s.H, v);
    };
    if (t >= lengths[n]) {  // a frozen step: dh and dc pass through, no gate cotangents
      for (int q = 0; q < 4; ++q) put(q, _mm512_setzero_ps());
      Store(m, dh0 + state, dh);
      return;
    }
    const float* a = acts[d] + res * G + unit;
    const __m512 i = Load(m, a), f = Load(m, a + s.H), g = Load(m, a + 2 * s.H);
    const __m512 o = Load(m, a + 3 * s.H);
    const __m512 c = Load(m, cs[d] + res * s.H + unit);
    const __m512 c_prev = step > 0
                              ? Load(m, cs[d] + s.Residual(s.Time(d, step - 1), n) * s.H + unit)
                              : Load(m, c0 + state);
    const __m512 dr = _mm512_add_ps(dh, Load(m, d_ys + s.Row(t, n, d) * s.H + unit));
    const __m512 one = Set(1.0f), tanh_c = Tanh(c);
    const __m512 dc = _mm512_fmadd_ps(_mm512_mul_ps(dr, o), _mm512_fnmadd_ps(tanh_c, tanh_c, one),
                                      Load(m, dc0 + state));
    const __m512 di = _mm512_mul_ps(_mm512_mul_ps(dc, g), _mm512_mul_ps(i, _mm512_sub_ps(one, i)));
    const __m512 df =
        _mm512_mul_ps(_mm512_mul_ps(dc, c_prev), _mm512_mul_ps(f, _mm512_sub_ps(one, f)));
    const __m512 dgg = _mm512_mul_ps(_mm512_mul_ps(dc, i), _mm512_fnmadd_ps(g, g, one));
    const __m512 do_ =
        _mm512_mul_ps(_mm512_mul_ps(dr, tanh_c), _mm512_mul_ps(o, _mm512_sub_ps(one, o)));
    put(0, di);  // dg may alias a: every gate was loaded above
    put(1, df);
    put(2, dgg);
    put(3, do_);
    Store(m, dc0 + state, _mm512_mul_ps(dc, f));
    Store(m, dh0 + state, _mm512_setzero_ps());
  }
};

#pragma GCC pop_options

using F32 = ffi::Buffer<ffi::F32>;
using F32Out = ffi::ResultBuffer<ffi::F32>;
using S32 = ffi::Buffer<ffi::S32>;

// The buffers of the matmul operands (x, w_ih, w_hh) in M.
template <typename M>
struct Operand;
template <>
struct Operand<float> {
  using Buffer = F32;
  using Result = F32Out;
};
template <>
struct Operand<Bf16> {
  using Buffer = ffi::Buffer<ffi::BF16>;
  using Result = ffi::ResultBuffer<ffi::BF16>;
};
template <typename M>
using MBuf = typename Operand<M>::Buffer;
template <typename M>
using MOut = typename Operand<M>::Result;

template <typename M>
const M* Data(MBuf<M> buffer) {
  return reinterpret_cast<const M*>(buffer.typed_data());
}
template <typename M>
M* Data(MOut<M> buffer) {
  return reinterpret_cast<M*>(buffer->typed_data());
}

// Runs a kernel; a failed allocation of its working memory becomes an XLA error.
template <typename Kernel>
ffi::Error Guarded(Kernel kernel, ffi::ThreadPool& pool) {
  try {
    kernel.Run(pool);
  } catch (const std::bad_alloc&) {
    return ffi::Error(ffi::ErrorCode::kResourceExhausted,
                      "jaxlstm's CPU kernel could not allocate its working memory");
  }
  return ffi::Error::Success();
}

// Whether AMX may run a kernel of operands M (asked for by `amx`) with the operands' k
// (the sizes it contracts) `k_multiple_of_32`.
template <typename M>
ffi::Error CheckAmx(bool amx, bool k_multiple_of_32) {
  static const bool granted = AmxGranted();
  if (amx && !(std::is_same_v<M, Bf16> && granted && k_multiple_of_32)) {
    return ffi::Error(ffi::ErrorCode::kInvalidArgument,
                      "jaxlstm's CPU kernel was asked for AMX products it cannot run");
  }
  return ffi::Error::Success();
}

template <typename M, bool kSave>
ffi::Error ForwardImpl(ffi::ThreadPool pool, MBuf<M> x, MBuf<M> w_ih_0, MBuf<M> w_ih_1, F32 b_0,
                       F32 b_1, MBuf<M> w_hh_0, MBuf<M> w_hh_1, F32 h0, F32 c0, S32 lengths,
                       F32Out ys, F32Out hn, F32Out cn, F32Out acts_0, F32Out acts_1, F32Out cs_0,
                       F32Out cs_1, MOut<M> hp_0, MOut<M> hp_1, bool amx) {
  const auto xd = x.dimensions(), hd = h0.dimensions();  // (L, rows, Ie), (D, N, H)
  const int64_t n = hd[1];
  if (ffi::Error error = CheckAmx<M>(amx, xd[2] % 32 == 0); error.failure()) return error;
  if (xd[1] != (amx ? RowBlocks(n).Rows() : n)) {
    return ffi::Error(ffi::ErrorCode::kInvalidArgument,
                      "jaxlstm's CPU kernel got an input of the wrong number of rows");
  }
  Forward<M> forward{Shape{xd[0], n, hd[0], hd[2], xd[2]},
                     Data<M>(x),
                     {Data<M>(w_ih_0), Data<M>(w_ih_1)},
                     {b_0.typed_data(), b_1.typed_data()},
                     {Data<M>(w_hh_0), Data<M>(w_hh_1)},
                     h0.typed_data(),
                     c0.typed_data(),
                     lengths.typed_data(),
                     ys->typed_data(),
                     hn->typed_data(),
                     cn->typed_data(),
                     {nullptr, nullptr},
                     {nullptr, nullptr},
                     {nullptr, nullptr},
                     amx};
  if constexpr (kSave) {
    forward.acts[0] = acts_0->typed_data(), forward.acts[1] = acts_1->typed_data();
    forward.cs[0] = cs_0->typed_data(), forward.cs[1] = cs_1->typed_data();
    forward.hp[0] = Data<M>(hp_0), forward.hp[1] = Data<M>(hp_1);
  }
  return Guarded(forward, pool);
}

template <typename M>
ffi::Error BackwardImpl(ffi::ThreadPool pool, F32 d_ys, F32 acts_0, F32 acts_1, F32 cs_0, F32 cs_1,
                        MBuf<M> w_hh_0, MBuf<M> w_hh_1, F32 c0, S32 lengths, F32 d_hn, F32 d_cn,
                        F32Out dgates_0, F32Out dgates_1, F32Out dh0, F32Out dc0, bool amx) {
  const auto ad = acts_0.dimensions(), cd = c0.dimensions();  // (L, N, G), (D, N, H)
  const Shape shape{ad[0], ad[1], cd[0], cd[2], 0};  // (the backward pass needs no input size)
  if (ffi::Error error = CheckAmx<M>(amx, shape.G() % 32 == 0); error.failure()) return error;
  return Guarded(Backward<M>{shape,
                             d_ys.typed_data(),
                             {acts_0.typed_data(), acts_1.typed_data()},
                             {cs_0.typed_data(), cs_1.typed_data()},
                             {Data<M>(w_hh_0), Data<M>(w_hh_1)},
                             c0.typed_data(),
                             lengths.typed_data(),
                             d_hn.typed_data(),
                             d_cn.typed_data(),
                             {dgates_0->typed_data(), dgates_1->typed_data()},
                             dh0->typed_data(),
                             dc0->typed_data(),
                             amx},
                 pool);
}

// Arguments and results in ForwardImpl's and BackwardImpl's order, MB the buffers of the
// matmul operands (and of the forward's residual hp).
#define FORWARD_BINDING(MB)   \
  ffi::Ffi::Bind()            \
      .Ctx<ffi::ThreadPool>() \
      .Arg<MB>()              \
      .Arg<MB>()              \
      .Arg<MB>()              \
      .Arg<F32>()             \
      .Arg<F32>()             \
      .Arg<MB>()              \
      .Arg<MB>()              \
      .Arg<F32>()             \
      .Arg<F32>()             \
      .Arg<S32>()             \
      .Ret<F32>()             \
      .Ret<F32>()             \
      .Ret<F32>()             \
      .Ret<F32>()             \
      .Ret<F32>()             \
      .Ret<F32>()             \
      .Ret<F32>()             \
      .Ret<MB>()              \
      .Ret<MB>()              \
      .Attr<bool>("amx")
#define BACKWARD_BINDING(MB)  \
  ffi::Ffi::Bind()            \
      .Ctx<ffi::ThreadPool>() \
      .Arg<F32>()             \
      .Arg<F32>()             \
      .Arg<F32>()             \
      .Arg<F32>()             \
      .Arg<F32>()             \
      .Arg<MB>()              \
      .Arg<MB>()              \
      .Arg<F32>()             \
      .Arg<S32>()             \
      .Arg<F32>()             \
      .Arg<F32>()             \
      .Ret<F32>()             \
      .Ret<F32>()             \
      .Ret<F32>()             \
      .Ret<F32>()             \
      .Attr<bool>("amx")

XLA_FFI_DEFINE_HANDLER_SYMBOL(LstmForward, (ForwardImpl<float, false>), FORWARD_BINDING(F32));
XLA_FFI_DEFINE_HANDLER_SYMBOL(LstmForwardSave, (ForwardImpl<float, true>), FORWARD_BINDING(F32));
XLA_FFI_DEFINE_HANDLER_SYMBOL(LstmBackward, BackwardImpl<float>, BACKWARD_BINDING(F32));
XLA_FFI_DEFINE_HANDLER_SYMBOL(LstmForwardBf16, (ForwardImpl<Bf16, false>),
                              FORWARD_BINDING(MBuf<Bf16>));
XLA_FFI_DEFINE_HANDLER_SYMBOL(LstmForwardSaveBf16, (ForwardImpl<Bf16, true>),
                              FORWARD_BINDING(MBuf<Bf16>));
XLA_FFI_DEFINE_HANDLER_SYMBOL(LstmBackwardBf16, BackwardImpl<Bf16>, BACKWARD_BINDING(MBuf<Bf16>));

PyObject* Capsule(void* fn) { return PyCapsule_New(fn, nullptr, nullptr); }

PyObject* Handlers(PyObject*, PyObject*) {
  return Py_BuildValue(
      "{s:N,s:N,s:N,s:N,s:N,s:N}", "jaxlstm_lstm_forward",
      Capsule(reinterpret_cast<void*>(LstmForward)), "jaxlstm_lstm_forward_save",
      Capsule(reinterpret_cast<void*>(LstmForwardSave)), "jaxlstm_lstm_backward",
      Capsule(reinterpret_cast<void*>(LstmBackward)), "jaxlstm_lstm_forward_bf16",
      Capsule(reinterpret_cast<void*>(LstmForwardBf16)), "jaxlstm_lstm_forward_save_bf16",
      Capsule(reinterpret_cast<void*>(LstmForwardSaveBf16)), "jaxlstm_lstm_backward_bf16",
      Capsule(reinterpret_cast<void*>(LstmBackwardBf16)));
}

// Whether this CPU runs the float32 kernels (AVX-512F/DQ/BW/VL, FMA).
PyObject* Supported(PyObject*, PyObject*) {
  __builtin_cpu_init();
  const bool ok = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512dq") &&
                  __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512vl") &&
                  __builtin_cpu_supports("fma");
  return PyBool_FromLong(ok);
}

// Whether it also runs the bfloat16 ones (AVX512_BF16).
PyObject* SupportedBf16(PyObject* self, PyObject* args) {
  PyObject* base = Supported(self, args);
  const bool ok = base == Py_True && __builtin_cpu_supports("avx512bf16");
  Py_DECREF(base);
  return PyBool_FromLong(ok);
}

// Whether the bfloat16 kernels may also use AMX's tiles (see AmxGranted).
PyObject* SupportedAmx(PyObject* self, PyObject* args) {
  PyObject* base = SupportedBf16(self, args);
  const bool ok = base == Py_True && AmxGranted();
  Py_DECREF(base);
  return PyBool_FromLong(ok);
}

PyMethodDef kMethods[] = {
    {"handlers", Handlers, METH_NOARGS, "The XLA FFI handlers, by target name."},
    {"supported", Supported, METH_NOARGS, "Whether this CPU runs the float32 kernels."},
    {"supported_bf16", SupportedBf16, METH_NOARGS, "Whether it runs the bfloat16 ones."},
    {"supported_amx", SupportedAmx, METH_NOARGS, "Whether those may use AMX's tiles."},
    {nullptr, nullptr, 0, nullptr}};

PyModuleDef kModule = {PyModuleDef_HEAD_INIT, "_cpu_kernel",
                       "jaxlstm's fused LSTM recurrence for x86-64 CPUs (XLA FFI).", -1, kMethods};

}  // namespace

PyMODINIT_FUNC PyInit__cpu_kernel() { return PyModule_Create(&kModule); }
