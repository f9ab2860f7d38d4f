#include "team.h"

#include <immintrin.h>
#include <sched.h>
#include <x86intrin.h>

#include <algorithm>
#include <thread>

namespace jaxlstm {
namespace {

// Pauses before a waiting thread yields its core: ~50 us (a step takes tens of them).
constexpr int kSpins = 2000;

// Backups wait this many cycles past three of the thread's own item-times (~3.5 us).
constexpr uint64_t kPatience = 12000;

// Spins (a pause), then yields the core: the thread waited for may need it.
void Wait(int spins) {
  if (spins < kSpins) {
    _mm_pause();
  } else {
    std::this_thread::yield();
  }
}

}  // namespace

Team::Team(int threads, int64_t items, int64_t steps, bool backups, const TileConfig* tiles,
           const void* work, Call call)
    : threads_(threads),
      items_(items),
      steps_(steps),
      backups_(backups),
      tiles_(tiles),
      work_(work),
      call_(call),
      next_(new std::atomic<int64_t>[items]),
      done_(new std::atomic<int64_t>[items]) {
  for (int64_t i = 0; i < items; ++i) {
    next_[i].store(0);
    done_[i].store(0);
  }
}

void Team::Alone() {
  if (tiles_ != nullptr) LoadTiles(*tiles_);
  for (int64_t step = 0; step < steps_; ++step)
    for (int64_t item = 0; item < items_; ++item) call_(work_, item, step, 0);
  if (tiles_ != nullptr) ReleaseTiles();
}

void Team::Join(int thread) {
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
        } else {
          Wait(spins);
        }
      }
    }
    if (tiles_ != nullptr) ReleaseTiles();
  }
  inside_.fetch_sub(1);
}

void Team::Finish() {
  finished_.store(true);
  for (int spins = 0; inside_.load() != 0; ++spins) Wait(spins);
}

void Team::Execute(int64_t item, int64_t step, int thread, uint64_t& item_cycles) {
  const uint64_t begin = __rdtsc();
  call_(work_, item, step, thread);
  item_cycles = (3 * item_cycles + (__rdtsc() - begin)) / 4;
  int64_t done = done_[item].load();
  while (done < step + 1 && !done_[item].compare_exchange_weak(done, step + 1)) {
  }
}

int64_t Team::Completed() const {
  int64_t least = steps_;
  for (int64_t i = 0; i < items_; ++i) least = std::min(least, done_[i].load());
  return least;
}

int CpuCount() {
  cpu_set_t set;
  if (sched_getaffinity(0, sizeof(set), &set) == 0) return std::max(1, CPU_COUNT(&set));
  return std::max(1u, std::thread::hardware_concurrency());
}

int ThreadsFor(int64_t items, double flops_per_step) {
  const int by_work = static_cast<int>(std::max(1.0, flops_per_step / 2.0e5));
  return static_cast<int>(
      std::max<int64_t>(1, std::min<int64_t>({int64_t{CpuCount()}, items, int64_t{by_work}})));
}

}  // namespace jaxlstm
