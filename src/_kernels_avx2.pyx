# cython: language_level=3, boundscheck=False, wraparound=False
# cython: cdivision=True, initializedcheck=False, cpow=True
# distutils: language = c++
# The kernels, built by setup.py for one instruction set (see kernels.pxi).
include "kernels.pxi"
