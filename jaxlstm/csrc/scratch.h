// The kernels' working memory: per calling thread, kept from one call to the next (a call
// that allocated megabytes afresh would pay their page faults every time), bounded after
// the call that grew it past kKeepBytes.
#ifndef JAXLSTM_CSRC_SCRATCH_H_
#define JAXLSTM_CSRC_SCRATCH_H_

#include <cstddef>
#include <cstdint>

namespace jaxlstm {

// Tells the buffers of one call apart.
enum Slot { kPanelsSlot, kHSlot, kCSlot, kHmSlot, kAccSlot, kCopySlot, kInputSlot, kSlots };

// The most working memory a thread keeps between calls: 64 MiB (the forward of a layer of
// 200 steps, batch 64, 512 units, jaxlstm-bench's `big`, takes 58 MiB, mostly the states
// of every step; longer or wider layers map theirs afresh for each call).
constexpr size_t kKeepBytes = size_t{64} << 20;

// At least `bytes` of this thread's buffer `slot`, on a page boundary (a 64-byte load
// from a misaligned panel touches two cache lines: AMX steps ran 2.5x slower). Its
// contents are undefined; std::bad_alloc where the system has no memory for it.
void* ScratchBytes(Slot slot, size_t bytes);

template <typename T>
T* Scratch(Slot slot, int64_t n) {
  return static_cast<T*>(ScratchBytes(slot, static_cast<size_t>(n) * sizeof(T)));
}

// Gives this thread's buffers back to the system where they hold more than kKeepBytes in
// all (the end of every kernel call).
void TrimScratch();

// The bytes this thread's buffers hold.
size_t ScratchHeld();

}  // namespace jaxlstm

#endif  // JAXLSTM_CSRC_SCRATCH_H_
