#include "scratch.h"

#include <sys/mman.h>

#include <new>

namespace jaxlstm {
namespace {

// Mapped memory: given back to the system when unmapped (glibc's free keeps blocks below
// its mmap threshold, which rises to 32 MiB, in the process).
struct Buffer {
  void* data = nullptr;
  size_t size = 0;

  void Release() {
    if (data != nullptr) munmap(data, size);
    data = nullptr;
    size = 0;
  }
  ~Buffer() { Release(); }
};

struct Buffers {
  Buffer slots[kSlots];
};

thread_local Buffers buffers;

}  // namespace

void* ScratchBytes(Slot slot, size_t bytes) {
  if (bytes == 0) bytes = 1;  // (mmap maps no empty range)
  Buffer& buffer = buffers.slots[slot];
  if (buffer.size < bytes) {
    buffer.Release();
    void* data = mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (data == MAP_FAILED) throw std::bad_alloc();
    buffer.data = data;
    buffer.size = bytes;
  }
  return buffer.data;
}

void TrimScratch() {
  if (ScratchHeld() <= kKeepBytes) return;
  for (Buffer& buffer : buffers.slots) buffer.Release();
}

size_t ScratchHeld() {
  size_t held = 0;
  for (const Buffer& buffer : buffers.slots) held += buffer.size;
  return held;
}

}  // namespace jaxlstm
