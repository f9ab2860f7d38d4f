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

XLA_FFI_DEFINE_HANDLER_SYMBOL(Avx512Forward, (ForwardImpl<float, false>), FORWARD_BINDING(F32));
XLA_FFI_DEFINE_HANDLER_SYMBOL(Avx512ForwardSave, (ForwardImpl<float, true>), FORWARD_BINDING(F32));
XLA_FFI_DEFINE_HANDLER_SYMBOL(Avx512Backward, BackwardImpl<float>, BACKWARD_BINDING(F32));
XLA_FFI_DEFINE_HANDLER_SYMBOL(Avx512ForwardBf16, (ForwardImpl<Bf16, false>),
                              FORWARD_BINDING(MBuf<Bf16>));
XLA_FFI_DEFINE_HANDLER_SYMBOL(Avx512ForwardSaveBf16, (ForwardImpl<Bf16, true>),
                              FORWARD_BINDING(MBuf<Bf16>));
XLA_FFI_DEFINE_HANDLER_SYMBOL(Avx512BackwardBf16, BackwardImpl<Bf16>, BACKWARD_BINDING(MBuf<Bf16>));

}  // namespace jaxlstm::avx512

#pragma GCC pop_options  // (the table below runs on any CPU)

std::vector<jaxlstm::Handler> jaxlstm::Avx512Handlers() {
  return {
      {"jaxlstm_avx512_lstm_forward", reinterpret_cast<void*>(avx512::Avx512Forward)},
      {"jaxlstm_avx512_lstm_forward_save", reinterpret_cast<void*>(avx512::Avx512ForwardSave)},
      {"jaxlstm_avx512_lstm_backward", reinterpret_cast<void*>(avx512::Avx512Backward)},
      {"jaxlstm_avx512_lstm_forward_bf16", reinterpret_cast<void*>(avx512::Avx512ForwardBf16)},
      {"jaxlstm_avx512_lstm_forward_save_bf16",
       reinterpret_cast<void*>(avx512::Avx512ForwardSaveBf16)},
      {"jaxlstm_avx512_lstm_backward_bf16", reinterpret_cast<void*>(avx512::Avx512BackwardBf16)}};
}
