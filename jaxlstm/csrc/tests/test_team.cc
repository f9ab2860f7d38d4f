// The thread team (jaxlstm/csrc/team.h): every item of every step runs, the steps in
// order, whatever the pool does with the helpers (runs them at once, late, or never), with
// more threads than cores, with and without backups.
#include <atomic>
#include <functional>
#include <memory>
#include <thread>
#include <vector>

#include "check.h"
#include "team.h"

namespace {

// A pool whose tasks each get a thread of their own, now (or, `late`, when it is destroyed).
class ThreadPool {
 public:
  explicit ThreadPool(bool late = false) : late_(late) {}
  ~ThreadPool() {
    for (auto& task : waiting_) threads_.emplace_back(std::move(task));
    for (auto& thread : threads_) thread.join();
  }
  template <typename F>
  void Schedule(F&& f) {
    if (late_) {
      waiting_.emplace_back(std::forward<F>(f));
    } else {
      threads_.emplace_back(std::forward<F>(f));
    }
  }

 private:
  bool late_;
  std::vector<std::function<void()>> waiting_;
  std::vector<std::thread> threads_;
};

// A pool that drops its tasks: no helper ever comes.
struct NoPool {
  template <typename F>
  void Schedule(F&&) {}
};

// Runs a team of `threads` over items x steps and checks what ran: each (item, step) once
// (at least once with backups), a step's items only after all of the step before, each
// thread index below `threads`.
template <typename Pool>
void CheckTeam(Pool& pool, int threads, int64_t items, int64_t steps, bool backups) {
  std::vector<std::atomic<int>> runs(items * steps);
  std::vector<std::atomic<int64_t>> finished(steps);  // items of each step finished
  std::atomic<int> out_of_order{0}, bad_thread{0};
  jaxlstm::Team::Run(pool, threads, items, steps, backups, nullptr,
                     [&](int64_t item, int64_t step, int thread) {
                       if (step > 0 && finished[step - 1].load() < items) ++out_of_order;
                       if (thread < 0 || thread >= threads) ++bad_thread;
                       if (runs[step * items + item].fetch_add(1) == 0) ++finished[step];
                     });
  CHECK(out_of_order.load() == 0) << out_of_order.load() << " items ran before the step ahead";
  CHECK(bad_thread.load() == 0);
  int missing = 0, repeated = 0;
  for (auto& r : runs) {
    missing += r.load() == 0;
    repeated += r.load() > 1;
  }
  CHECK(missing == 0) << missing << " items never ran (threads " << threads << ")";
  CHECK(backups || repeated == 0) << repeated << " items ran twice without backups";
}

TEST(one_thread_runs_the_plain_loop) {
  NoPool pool;
  CheckTeam(pool, 1, 5, 50, false);
}

TEST(helpers_share_the_steps) {
  for (bool backups : {false, true}) {
    ThreadPool pool;
    CheckTeam(pool, 2, 7, 300, backups);
  }
}

TEST(more_threads_than_cores) {
  const int threads = 4 * jaxlstm::CpuCount() + 3;
  for (bool backups : {false, true}) {
    ThreadPool pool;
    CheckTeam(pool, threads, 16, 200, backups);
  }
}

TEST(helpers_that_never_come) {
  NoPool pool;
  CheckTeam(pool, 8, 6, 100, false);
  CheckTeam(pool, 8, 6, 100, true);
}

TEST(helpers_that_come_after_the_call) {
  ThreadPool pool(/*late=*/true);
  CheckTeam(pool, 4, 6, 100, true);
}  // (the pool runs them here: they must find the work done and leave)

TEST(threads_follow_the_work) {
  CHECK(jaxlstm::CpuCount() >= 1);
  CHECK(jaxlstm::ThreadsFor(64, 1e9) == std::min(64, jaxlstm::CpuCount()));
  CHECK(jaxlstm::ThreadsFor(3, 1e9) == std::min(3, jaxlstm::CpuCount()));
  CHECK(jaxlstm::ThreadsFor(64, 1e5) == 1);  // a step too small to share
}

}  // namespace

CHECK_MAIN("team")
