// The thread team that runs a kernel's loop: work items shared out over the calling
// thread and a thread pool's tasks, step after step.
#ifndef JAXLSTM_CSRC_TEAM_H_
#define JAXLSTM_CSRC_TEAM_H_

#include <atomic>
#include <cstdint>
#include <memory>

#include "tiles.h"

namespace jaxlstm {

// Runs work(item, step, thread) for every item in [0, items) and step in [0, steps), all
// items of a step before any of the next, on the calling thread and on up to threads - 1
// tasks scheduled on `pool` (XLA's intra-op thread pool; anything with Schedule(task)):
// `thread` < threads names the running thread's scratch space.
//
// Thread t starts each step at its own share of the items (keeping its weights in its own
// cache) and goes on to any item of the step that nobody has started: the call never
// waits for a thread that is busy elsewhere or never comes; the caller alone finishes the
// work if it must. With `backups` (work whose items may run twice: same inputs, same
// outputs), a thread that has waited several item-times for the last items of a step runs
// them itself: a thread descheduled in the middle of an item (another process's threads
// on the same cores) then holds nobody up. A waiting thread spins briefly, then yields its
// core (more threads than free cores never spin against the one they wait for). Helpers
// that start late find the steps done and leave; the call returns once no thread is
// inside, and the shared state outlives it. With `tiles`, each thread configures its AMX
// tiles so, and releases them when it leaves.
class Team {
 public:
  template <typename Pool, typename Work>
  static void Run(Pool& pool, int threads, int64_t items, int64_t steps, bool backups,
                  const TileConfig* tiles, const Work& work) {
    auto call = [](const void* w, int64_t item, int64_t step, int thread) {
      (*static_cast<const Work*>(w))(item, step, thread);
    };
    auto team = std::make_shared<Team>(threads, items, steps, backups, tiles, &work, call);
    if (threads == 1) {
      team->Alone();
      return;
    }
    for (int helper = 1; helper < threads; ++helper) {
      pool.Schedule([team, helper] { team->Join(helper); });
    }
    team->Join(0);
    team->Finish();
  }

  using Call = void (*)(const void* work, int64_t item, int64_t step, int thread);
  Team(int threads, int64_t items, int64_t steps, bool backups, const TileConfig* tiles,
       const void* work, Call call);

 private:
  void Alone();  // the plain loop, on the calling thread (no one to share with)
  void Join(int thread);
  void Finish();  // after the caller's Join: marks the work done, waits for the helpers inside
  void Execute(int64_t item, int64_t step, int thread, uint64_t& item_cycles);
  int64_t Completed() const;  // the number of steps every item has finished

  const int threads_;
  const int64_t items_, steps_;
  const bool backups_;
  const TileConfig* tiles_;  // the AMX tiles each thread configures, or nullptr
  const void* work_;
  const Call call_;
  std::unique_ptr<std::atomic<int64_t>[]> next_;  // per item: the next step to start
  std::unique_ptr<std::atomic<int64_t>[]> done_;  // per item: the steps finished
  std::atomic<int> inside_{0};                    // threads inside Join
  std::atomic<bool> finished_{false};
};

// The CPUs this process may run on.
int CpuCount();

// Threads worth using for `items` independent work items, `flops` in all per step:
// handing a step over between threads costs about a microsecond, so steps of less than
// 0.2 MFLOP a thread stay on fewer threads (measured: T=1000 N=8 H=128, 1 MFLOP a step,
// runs 1.2x faster on two threads than on one).
int ThreadsFor(int64_t items, double flops_per_step);

}  // namespace jaxlstm

#endif  // JAXLSTM_CSRC_TEAM_H_
