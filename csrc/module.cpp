// The extension's Python module. It holds no functions: every kernel registers itself as an operator
// torch.ops.bitdance_rt.<name> (TORCH_LIBRARY_FRAGMENT in its own .cu file); importing the module loads them.
#include <Python.h>

static PyModuleDef bitdance_rt_cuda_module = {PyModuleDef_HEAD_INIT, "bitdance_rt_cuda", nullptr, -1, nullptr};

#ifndef TORCH_EXTENSION_NAME
#define TORCH_EXTENSION_NAME bitdance_rt_cuda
#endif
#define BDRT_CONCAT_(a, b) a##b
#define BDRT_CONCAT(a, b) BDRT_CONCAT_(a, b)

PyMODINIT_FUNC BDRT_CONCAT(PyInit_, TORCH_EXTENSION_NAME)(void) {
  bitdance_rt_cuda_module.m_name = Py_STRINGIFY(TORCH_EXTENSION_NAME);
  return PyModule_Create(&bitdance_rt_cuda_module);
}
