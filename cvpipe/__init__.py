"""cvpipe: classic computer-vision features against a CNN on CIFAR-10."""

import os

# On a CPU shared with other processes, OpenMP threads that spin while waiting for a
# descheduled partner make torch several times slower; passive waiting avoids that
# (measured on 2 shared cores: 0.7 s instead of 2.6 s a CNN step). Set here, before any
# module imports torch, and never over the user's own setting.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

__version__ = "0.1.0"
