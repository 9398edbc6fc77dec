"""ovdiff_bank: zero-shot open-vocabulary segmentation with a prototype bank (OVDiff), over the same Rust engine as the ``ovdiff-bank`` command line.

>>> import numpy as np, ovdiff_bank as ob
>>> seg = ob.Segmenter("team")                                  # doctest: +SKIP
>>> r = seg.segment("photo.jpg", classes=["person", "cat"])     # doctest: +SKIP
>>> r.labels.shape, r.classes, r.fractions                      # doctest: +SKIP

ONNX Runtime is found as the CLI finds it: ``<home>/lib``, or ``ORT_DYLIB_PATH``.
See docs/python.md.
"""

from . import _native
from ._bank import Bank, BankFile
from ._segment import Segmentation, Segmenter
from .errors import BadImage, BankLocked, BankNotFound, EncoderMismatch, Error, UnknownClass

__version__: str = _native.__version__

__all__ = [
    "Segmenter",
    "Segmentation",
    "Bank",
    "BankFile",
    "Error",
    "BankNotFound",
    "EncoderMismatch",
    "BadImage",
    "UnknownClass",
    "BankLocked",
    "__version__",
]
