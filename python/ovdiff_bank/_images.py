"""Turning what a caller passes as an image into what the native module takes: a path, or ``(bytes, width, height)``."""

from __future__ import annotations

import os
from typing import Any, Tuple, Union

import numpy as np

#: What the native module accepts for one image.
NativeImage = Union[str, Tuple[bytes, int, int]]


def check_array(a: np.ndarray) -> np.ndarray:
    """Check that ``a`` is an ``H×W×3`` C-contiguous uint8 array; raise ``ValueError`` saying what is wrong otherwise."""
    if a.dtype != np.uint8:
        raise ValueError(
            f"image array has dtype {a.dtype}; give uint8 RGB values (H×W×3), "
            "e.g. (a * 255).clip(0, 255).astype(np.uint8)"
        )
    if a.ndim != 3:
        raise ValueError(
            f"image array is {a.ndim}-D with shape {a.shape}; give H×W×3 RGB "
            "(a greyscale image: np.stack([a] * 3, axis=-1))"
        )
    if a.shape[2] != 3:
        raise ValueError(
            f"image array has {a.shape[2]} channels (shape {a.shape}); give 3 (RGB)"
            + ("; drop the alpha channel with a[..., :3]" if a.shape[2] == 4 else "")
        )
    if a.shape[0] == 0 or a.shape[1] == 0:
        raise ValueError(f"image array is empty (shape {a.shape})")
    if not a.flags.c_contiguous:
        raise ValueError(
            "image array is not C-contiguous (a view such as a[:, ::2] or a transpose); "
            "pass np.ascontiguousarray(a)"
        )
    return a


def is_pil_image(obj: Any) -> bool:
    """Whether ``obj`` is a PIL image (PIL is not imported unless the caller did)."""
    return type(obj).__module__.startswith("PIL.") and hasattr(obj, "convert")


def native_image(image: Any) -> NativeImage:
    """A path (``str`` or ``os.PathLike``), a PIL image or an ``H×W×3`` uint8 RGB array, as the native module takes it."""
    if isinstance(image, (str, os.PathLike)):
        return os.fspath(image)
    if is_pil_image(image):
        image = np.asarray(image.convert("RGB"))
    if not isinstance(image, np.ndarray):
        raise TypeError(
            f"an image is a path, a PIL.Image or an H×W×3 uint8 numpy array, not {type(image).__name__}"
        )
    a = check_array(image)
    return (a.tobytes(), int(a.shape[1]), int(a.shape[0]))
