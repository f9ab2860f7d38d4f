// The Python extension jaxlstm._cpu_kernel: the kernels' XLA FFI handlers for the
// instruction sets this CPU has, and what it has (CPython's limited API only).
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <vector>

#include "kernels.h"
#include "tiles.h"

namespace jaxlstm {
namespace {

bool HasAvx512() {  // the float32 kernels' AVX-512
  __builtin_cpu_init();
  return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512dq") &&
         __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512vl") &&
         __builtin_cpu_supports("fma");
}

bool HasAvx2() {
  __builtin_cpu_init();
  return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
}

// The handlers of the instruction sets this CPU runs.
std::vector<Handler> Runnable() {
  std::vector<Handler> all;
  if (HasAvx512()) all = Avx512Handlers();
  if (HasAvx2()) {
    for (const Handler& handler : Avx2Handlers()) all.push_back(handler);
  }
  return all;
}

PyObject* Handlers(PyObject*, PyObject*) {
  PyObject* dict = PyDict_New();
  for (const Handler& handler : Runnable()) {
    if (dict == nullptr) return nullptr;
    PyObject* capsule = PyCapsule_New(handler.function, nullptr, nullptr);
    if (capsule == nullptr || PyDict_SetItemString(dict, handler.name, capsule) != 0) {
      Py_XDECREF(capsule);
      Py_CLEAR(dict);
      return nullptr;
    }
    Py_DECREF(capsule);
  }
  return dict;
}

PyObject* Isas(PyObject*, PyObject*) {
  PyObject* isas = PyList_New(0);
  for (const auto& [name, runs] :
       {std::pair{"avx512", HasAvx512()}, std::pair{"avx2", HasAvx2()}}) {
    if (isas == nullptr || !runs) continue;
    PyObject* item = PyUnicode_FromString(name);
    if (item == nullptr || PyList_Append(isas, item) != 0) Py_CLEAR(isas);
    Py_XDECREF(item);
  }
  return isas;
}

PyObject* SupportedBf16(PyObject*, PyObject*) {
  return PyBool_FromLong(HasAvx512() && __builtin_cpu_supports("avx512bf16"));
}

PyObject* SupportedAmx(PyObject* self, PyObject* args) {
  return PyBool_FromLong(HasAvx512() && __builtin_cpu_supports("avx512bf16") && AmxGranted());
}

PyMethodDef kMethods[] = {
    {"handlers", Handlers, METH_NOARGS,
     "The XLA FFI handlers of the instruction sets this CPU runs, by target name."},
    {"isas", Isas, METH_NOARGS,
     "The instruction sets this CPU runs the float32 kernels with, best first."},
    {"supported_bf16", SupportedBf16, METH_NOARGS, "Whether it runs the bfloat16 ones."},
    {"supported_amx", SupportedAmx, METH_NOARGS, "Whether those may use AMX's tiles."},
    {nullptr, nullptr, 0, nullptr}};

PyModuleDef kModule = {PyModuleDef_HEAD_INIT, "_cpu_kernel",
                       "jaxlstm's fused LSTM recurrence for x86-64 CPUs (XLA FFI).", -1, kMethods};

}  // namespace
}  // namespace jaxlstm

PyMODINIT_FUNC PyInit__cpu_kernel() { return PyModule_Create(&jaxlstm::kModule); }
