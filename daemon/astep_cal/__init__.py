"""astep-cal: unattended calibration and plate-solving for the ASTEP telescope."""

__version__ = "0.1.0"

import os as _os

# OpenBLAS with one thread (set before numpy is first imported, which the package's modules do): the
# solve thread starts solve-field with a preexec_fn (a real fork, whose handlers run), and a fork while
# another thread is inside a multi-threaded OpenBLAS call can hang for good (solve_process._in_child).
# The matrix products here are small; the heavy steps are not BLAS.
_os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
