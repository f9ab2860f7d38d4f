// The kernels compiled for AVX-512: float32 and bfloat16 operands, AMX's tiles.
// clang-format off: the order is the build's (see simd.h)
#include "kernels.h"
#include "xla/ffi/api/ffi.h"

#define JAXLSTM_AVX512
#include "simd.h"  // (everything shared first, then the instruction set)

#include "amx.h"
#include "activations.h"
#include "gemm.h"
#include "pack.h"
#include "forward.h"
#include "backward.h"
#include "handlers.h"
// clang-format on

namespace jaxlstm::avx512 {

JAXLSTM_DEFINE_HANDLERS(Avx512);

}  // namespace jaxlstm::avx512

#pragma GCC pop_options  // (the table below runs on any CPU)

std::vector<jaxlstm::Handler> jaxlstm::Avx512Handlers() {
  return JAXLSTM_HANDLER_TABLE(Avx512, avx512);
}
