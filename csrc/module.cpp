// The Python module `vjepa_fast._C`. Importing it runs the static TORCH_LIBRARY registrations of this shared
// library; the module itself only answers whether the CUDA kernels were compiled in. Plain CPython API (no pybind11)
// keeps this file quick to compile.
#include <Python.h>

#ifdef VJEPA_FAST_WITH_CUDA
static constexpr long kCudaBuilt = 1;
#else
static constexpr long kCudaBuilt = 0;
#endif

static PyObject* cuda_built(PyObject*, PyObject*) { return PyBool_FromLong(kCudaBuilt); }

static PyMethodDef kMethods[] = {
    {"cuda_built", cuda_built, METH_NOARGS, "True when the CUDA kernels of vjepa_fast were compiled into _C."},
    {nullptr, nullptr, 0, nullptr},
};

static PyModuleDef kModule = {
    PyModuleDef_HEAD_INIT, "_C", "vjepa_fast C++/CUDA ops (registered as torch.ops.vjepa_fast.*)", -1, kMethods,
    nullptr, nullptr, nullptr, nullptr,
};

PyMODINIT_FUNC PyInit__C(void) { return PyModule_Create(&kModule); }
