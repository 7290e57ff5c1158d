"""cvpipe: classic computer-vision features against a CNN on CIFAR-10."""

__version__ = "0.1.0"
