// The kernels' working memory (jaxlstm/csrc/scratch.h): aligned, kept between calls,
// given back after a call that grew it past kKeepBytes.
#include <cstdint>
#include <cstring>
#include <thread>

#include "check.h"
#include "scratch.h"

namespace {

using jaxlstm::kKeepBytes;

TEST(buffers_are_aligned_and_kept) {
  auto* a = jaxlstm::Scratch<float>(jaxlstm::kHSlot, 1000);
  CHECK(reinterpret_cast<uintptr_t>(a) % 64 == 0);
  std::memset(a, 1, 1000 * sizeof(float));
  CHECK(jaxlstm::Scratch<float>(jaxlstm::kHSlot, 500) == a);  // smaller: the same memory
  auto* b = jaxlstm::Scratch<float>(jaxlstm::kCSlot, 1000);
  CHECK(b != a);
  jaxlstm::TrimScratch();  // small: kept
  CHECK(jaxlstm::Scratch<float>(jaxlstm::kHSlot, 1000) == a);
  CHECK(jaxlstm::ScratchHeld() >= 2000 * sizeof(float));
}

TEST(large_buffers_are_given_back) {
  const size_t big = kKeepBytes / 2 + 4096;
  auto* h = jaxlstm::Scratch<char>(jaxlstm::kHSlot, big);
  auto* c = jaxlstm::Scratch<char>(jaxlstm::kCSlot, big);
  std::memset(h, 1, big);  // touched: resident
  std::memset(c, 1, big);
  CHECK(jaxlstm::ScratchHeld() > kKeepBytes);
  jaxlstm::TrimScratch();
  CHECK(jaxlstm::ScratchHeld() == 0) << jaxlstm::ScratchHeld();
}

TEST(threads_have_their_own) {
  auto* mine = jaxlstm::Scratch<float>(jaxlstm::kAccSlot, 64);
  float* theirs = nullptr;
  std::thread([&] { theirs = jaxlstm::Scratch<float>(jaxlstm::kAccSlot, 64); }).join();
  CHECK(theirs != nullptr && theirs != mine);
}

}  // namespace

CHECK_MAIN("scratch")
