# cython: language_level=3
# cython: cdivision=True, initializedcheck=False, cpow=True
# distutils: language = c++
# The kernels, built by setup.py for one instruction set (see kernels.pxi).
# boundscheck and wraparound come from setup.py (off; CSOFTMAX_BOUNDSCHECK=1: on).
include "kernels.pxi"
