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

XLA_FFI_DEFINE_HANDLER_SYMBOL(Avx2Forward, (ForwardImpl<float, false>), FORWARD_BINDING(F32));
XLA_FFI_DEFINE_HANDLER_SYMBOL(Avx2ForwardSave, (ForwardImpl<float, true>), FORWARD_BINDING(F32));
XLA_FFI_DEFINE_HANDLER_SYMBOL(Avx2Backward, BackwardImpl<float>, BACKWARD_BINDING(F32));
XLA_FFI_DEFINE_HANDLER_SYMBOL(Avx2ForwardBf16, (ForwardImpl<Bf16, false>),
                              FORWARD_BINDING(MBuf<Bf16>));
XLA_FFI_DEFINE_HANDLER_SYMBOL(Avx2ForwardSaveBf16, (ForwardImpl<Bf16, true>),
                              FORWARD_BINDING(MBuf<Bf16>));
XLA_FFI_DEFINE_HANDLER_SYMBOL(Avx2BackwardBf16, BackwardImpl<Bf16>, BACKWARD_BINDING(MBuf<Bf16>));

}  // namespace jaxlstm::avx2

#pragma GCC pop_options  // (the table below runs on any CPU)

std::vector<jaxlstm::Handler> jaxlstm::Avx2Handlers() {
  return {
      {"jaxlstm_avx2_lstm_forward", reinterpret_cast<void*>(avx2::Avx2Forward)},
      {"jaxlstm_avx2_lstm_forward_save", reinterpret_cast<void*>(avx2::Avx2ForwardSave)},
      {"jaxlstm_avx2_lstm_backward", reinterpret_cast<void*>(avx2::Avx2Backward)},
      {"jaxlstm_avx2_lstm_forward_bf16", reinterpret_cast<void*>(avx2::Avx2ForwardBf16)},
      {"jaxlstm_avx2_lstm_forward_save_bf16", reinterpret_cast<void*>(avx2::Avx2ForwardSaveBf16)},
      {"jaxlstm_avx2_lstm_backward_bf16", reinterpret_cast<void*>(avx2::Avx2BackwardBf16)}};
}
