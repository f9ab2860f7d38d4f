// The kernels compiled for AVX2 and FMA: float32 and bfloat16 operands.
// clang-format off: the order is the build's (see simd.h)
#include "kernels.h"
#include "xla/ffi/api/ffi.h"

#include "simd.h"  // (everything shared first, then the instruction set)

#include "activations.h"
#include "gemm.h"
#include "pack.h"
#include "forward.h"
#include "backward.h"
#include "handlers.h"
// clang-format on

namespace jaxlstm::avx2 {

JAXLSTM_DEFINE_HANDLERS(Avx2);

}  // namespace jaxlstm::avx2

#pragma GCC pop_options  // (the table below runs on any CPU)

std::vector<jaxlstm::Handler> jaxlstm::Avx2Handlers() { return JAXLSTM_HANDLER_TABLE(Avx2, avx2); }
