// The kernels as XLA FFI handlers' implementations (include after simd.h and the loops;
// compiled in the instruction set's namespace): buffers in, a loop run, an error out. The
// binding macros list the arguments in their order; kernels_*.cc define the handlers.

namespace jaxlstm::JAXLSTM_ISA {

namespace ffi = xla::ffi;

using F32 = ffi::Buffer<ffi::F32>;
using F32Out = ffi::ResultBuffer<ffi::F32>;
using S32 = ffi::Buffer<ffi::S32>;

// The buffers of the matmul operands (x, w_ih, w_hh) in M.
template <typename M>
struct Operand;
template <>
struct Operand<float> {
  using Buffer = F32;
  using Result = F32Out;
};
template <>
struct Operand<Bf16> {
  using Buffer = ffi::Buffer<ffi::BF16>;
  using Result = ffi::ResultBuffer<ffi::BF16>;
};
template <typename M>
using MBuf = typename Operand<M>::Buffer;
template <typename M>
using MOut = typename Operand<M>::Result;

template <typename M>
const M* Data(MBuf<M> buffer) {
  return reinterpret_cast<const M*>(buffer.typed_data());
}
template <typename M>
M* Data(MOut<M> buffer) {
  return reinterpret_cast<M*>(buffer->typed_data());
}

// Runs a kernel, then bounds the working memory it leaves (scratch.h); a failed allocation
// of that memory becomes an XLA error.
template <typename Kernel>
ffi::Error Guarded(Kernel kernel, ffi::ThreadPool& pool) {
  try {
    kernel.Run(pool);
  } catch (const std::bad_alloc&) {
    TrimScratch();
    return ffi::Error(ffi::ErrorCode::kResourceExhausted,
                      "jaxlstm's CPU kernel could not allocate its working memory");
  }
  TrimScratch();
  return ffi::Error::Success();
}

// Whether AMX may run a kernel of operands M (asked for by `amx`) with the operands' k
// (the sizes it contracts) `k_multiple_of_32`.
template <typename M>
ffi::Error CheckAmx(bool amx, bool k_multiple_of_32) {
  if (amx && !(std::is_same_v<M, Bf16> && AmxGranted() && k_multiple_of_32)) {
    return ffi::Error(ffi::ErrorCode::kInvalidArgument,
                      "jaxlstm's CPU kernel was asked for AMX products it cannot run");
  }
  return ffi::Error::Success();
}

template <typename M, bool kSave>
ffi::Error ForwardImpl(ffi::ThreadPool pool, MBuf<M> x, MBuf<M> w_ih_0, MBuf<M> w_ih_1, F32 b_0,
                       F32 b_1, MBuf<M> w_hh_0, MBuf<M> w_hh_1, F32 h0, F32 c0, S32 lengths,
                       F32Out ys, F32Out hn, F32Out cn, F32Out acts_0, F32Out acts_1, F32Out cs_0,
                       F32Out cs_1, MOut<M> hp_0, MOut<M> hp_1, bool amx) {
  const auto xd = x.dimensions(), hd = h0.dimensions();  // (L, rows, Ie), (D, N, H)
  const int64_t n = hd[1];
  if (ffi::Error error = CheckAmx<M>(amx, xd[2] % 32 == 0); error.failure()) return error;
  if (xd[1] != (amx ? RowBlocks(n).Rows() : n)) {
    return ffi::Error(ffi::ErrorCode::kInvalidArgument,
                      "jaxlstm's CPU kernel got an input of the wrong number of rows");
  }
  Forward<M> forward{Shape{xd[0], n, hd[0], hd[2], xd[2]},
                     Data<M>(x),
                     {Data<M>(w_ih_0), Data<M>(w_ih_1)},
                     {b_0.typed_data(), b_1.typed_data()},
                     {Data<M>(w_hh_0), Data<M>(w_hh_1)},
                     h0.typed_data(),
                     c0.typed_data(),
                     lengths.typed_data(),
                     ys->typed_data(),
                     hn->typed_data(),
                     cn->typed_data(),
                     {nullptr, nullptr},
                     {nullptr, nullptr},
                     {nullptr, nullptr},
                     amx};
  if constexpr (kSave) {
    forward.acts[0] = acts_0->typed_data(), forward.acts[1] = acts_1->typed_data();
    forward.cs[0] = cs_0->typed_data(), forward.cs[1] = cs_1->typed_data();
    forward.hp[0] = Data<M>(hp_0), forward.hp[1] = Data<M>(hp_1);
  }
  return Guarded(forward, pool);
}

template <typename M>
ffi::Error BackwardImpl(ffi::ThreadPool pool, F32 d_ys, F32 acts_0, F32 acts_1, F32 cs_0, F32 cs_1,
                        MBuf<M> w_hh_0, MBuf<M> w_hh_1, F32 c0, S32 lengths, F32 d_hn, F32 d_cn,
                        F32Out dgates_0, F32Out dgates_1, F32Out dh0, F32Out dc0, bool amx) {
  const auto ad = acts_0.dimensions(), cd = c0.dimensions();  // (L, N, G), (D, N, H)
  const Shape shape{ad[0], ad[1], cd[0], cd[2], 0};  // (the backward pass needs no input size)
  if (ffi::Error error = CheckAmx<M>(amx, shape.G() % 32 == 0); error.failure()) return error;
  return Guarded(Backward<M>{shape,
                             d_ys.typed_data(),
                             {acts_0.typed_data(), acts_1.typed_data()},
                             {cs_0.typed_data(), cs_1.typed_data()},
                             {Data<M>(w_hh_0), Data<M>(w_hh_1)},
                             c0.typed_data(),
                             lengths.typed_data(),
                             d_hn.typed_data(),
                             d_cn.typed_data(),
                             {dgates_0->typed_data(), dgates_1->typed_data()},
                             dh0->typed_data(),
                             dc0->typed_data(),
                             amx},
                 pool);
}

// Arguments and results in ForwardImpl's and BackwardImpl's order, MB the buffers of the
// matmul operands (and of the forward's residual hp).
#define FORWARD_BINDING(MB)   \
  ffi::Ffi::Bind()            \
      .Ctx<ffi::ThreadPool>() \
      .Arg<MB>()              \
      .Arg<MB>()              \
      .Arg<MB>()              \
      .Arg<F32>()             \
      .Arg<F32>()             \
      .Arg<MB>()              \
      .Arg<MB>()              \
      .Arg<F32>()             \
      .Arg<F32>()             \
      .Arg<S32>()             \
      .Ret<F32>()             \
      .Ret<F32>()             \
      .Ret<F32>()             \
      .Ret<F32>()             \
      .Ret<F32>()             \
      .Ret<F32>()             \
      .Ret<F32>()             \
      .Ret<MB>()              \
      .Ret<MB>()              \
      .Attr<bool>("amx")
#define BACKWARD_BINDING(MB)  \
  ffi::Ffi::Bind()            \
      .Ctx<ffi::ThreadPool>() \
      .Arg<F32>()             \
      .Arg<F32>()             \
      .Arg<F32>()             \
      .Arg<F32>()             \
      .Arg<F32>()             \
      .Arg<MB>()              \
      .Arg<MB>()              \
      .Arg<F32>()             \
      .Arg<S32>()             \
      .Arg<F32>()             \
      .Arg<F32>()             \
      .Ret<F32>()             \
      .Ret<F32>()             \
      .Ret<F32>()             \
      .Ret<F32>()             \
      .Attr<bool>("amx")

}  // namespace jaxlstm::JAXLSTM_ISA

// The six handlers of one build (prefix P: Avx512, Avx2), in its namespace, then (after the
// unit's pragma is popped) the table of them by target name, jaxlstm_<isa>_lstm_*.
#define JAXLSTM_DEFINE_HANDLERS(P)                                                                 \
  XLA_FFI_DEFINE_HANDLER_SYMBOL(P##Forward, (ForwardImpl<float, false>), FORWARD_BINDING(F32));    \
  XLA_FFI_DEFINE_HANDLER_SYMBOL(P##ForwardSave, (ForwardImpl<float, true>), FORWARD_BINDING(F32)); \
  XLA_FFI_DEFINE_HANDLER_SYMBOL(P##Backward, BackwardImpl<float>, BACKWARD_BINDING(F32));          \
  XLA_FFI_DEFINE_HANDLER_SYMBOL(P##ForwardBf16, (ForwardImpl<Bf16, false>),                        \
                                FORWARD_BINDING(MBuf<Bf16>));                                      \
  XLA_FFI_DEFINE_HANDLER_SYMBOL(P##ForwardSaveBf16, (ForwardImpl<Bf16, true>),                     \
                                FORWARD_BINDING(MBuf<Bf16>));                                      \
  XLA_FFI_DEFINE_HANDLER_SYMBOL(P##BackwardBf16, BackwardImpl<Bf16>, BACKWARD_BINDING(MBuf<Bf16>))
#define JAXLSTM_HANDLER_TABLE(P, isa)                                                         \
  {                                                                                           \
    {"jaxlstm_" #isa "_lstm_forward", reinterpret_cast<void*>(isa::P##Forward)},              \
        {"jaxlstm_" #isa "_lstm_forward_save", reinterpret_cast<void*>(isa::P##ForwardSave)}, \
        {"jaxlstm_" #isa "_lstm_backward", reinterpret_cast<void*>(isa::P##Backward)},        \
        {"jaxlstm_" #isa "_lstm_forward_bf16", reinterpret_cast<void*>(isa::P##ForwardBf16)}, \
        {"jaxlstm_" #isa "_lstm_forward_save_bf16",                                           \
         reinterpret_cast<void*>(isa::P##ForwardSaveBf16)},                                   \
    {                                                                                         \
      "jaxlstm_" #isa "_lstm_backward_bf16", reinterpret_cast<void*>(isa::P##BackwardBf16)    \
    }                                                                                         \
  }
