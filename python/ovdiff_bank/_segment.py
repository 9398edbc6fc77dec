"""The :class:`Segmenter` and its results, :class:`Segmentation`."""

from __future__ import annotations

import json
import os
import sys
from typing import Any, Dict, Iterable, Iterator, List, Optional, Sequence, Tuple, Union

import numpy as np

from . import _native
from ._images import native_image

ImageLike = Any  # an H×W×3 uint8 ndarray, a PIL.Image, or a path
Classes = Optional[Union[str, Sequence[str]]]


def _class_list(classes: Classes) -> Optional[List[str]]:
    """``None`` (every class of the bank), ``"a,b"`` or a sequence of names, as the native list."""
    if classes is None:
        return None
    if isinstance(classes, str):
        classes = classes.split(",")
    names = [c.strip() for c in classes]
    return [c for c in names if c]


def _layout(windows: Optional[Dict[str, Any]]) -> Optional[Tuple[int, List[int], int, bool]]:
    """A window layout dict as the native tuple (missing keys: OVDiff's values)."""
    if windows is None:
        return None
    unknown = set(windows) - {"short_side", "sizes", "stride", "include_whole"}
    if unknown:
        raise ValueError(f"unknown window layout keys: {sorted(unknown)}")
    return (
        int(windows.get("short_side", 448)),
        [int(s) for s in windows.get("sizes", [448, 336])],
        int(windows.get("stride", 224)),
        bool(windows.get("include_whole", True)),
    )


class Segmentation:
    """One image, segmented: its labels, the classes found, and why.

    Attributes:
        classes: ``["background", *query classes]``: label ``k`` is ``classes[k]``.
        width, height: the image's size in pixels.
    """

    def __init__(self, native: "_native.Segmentation") -> None:
        self._n = native
        self.classes: List[str] = ["background", *native.class_names]
        self.width: int = native.width
        self.height: int = native.height
        self._labels: Optional[np.ndarray] = None
        self._found: Optional[List[Dict[str, Any]]] = None

    def __repr__(self) -> str:
        found = ", ".join(f"{c['name']} {c['fraction']:.1%}" for c in self.found)
        return f"<Segmentation {self.width}×{self.height}: {found or 'background only'}>"

    @property
    def labels(self) -> np.ndarray:
        """``H×W`` uint16 labels: 0 is background, ``k`` is ``classes[k]``."""
        if self._labels is None:
            raw = self._n.labels_bytes()
            self._labels = np.frombuffer(raw, dtype="<u2").reshape(self.height, self.width)
        return self._labels

    @property
    def found(self) -> List[Dict[str, Any]]:
        """The classes found (at least one pixel), in query order, as ``NAME.json`` lists them.

        Each: ``label``, ``name``, ``pixels``, ``fraction``, ``mean_score`` and
        ``support`` (the support images whose prototypes won its pixels).
        """
        if self._found is None:
            self._found = json.loads(self._n.found_json())
        return self._found

    @property
    def fractions(self) -> Dict[str, float]:
        """Every query class's share of the pixels (0.0 when not found)."""
        out = {name: 0.0 for name in self.classes[1:]}
        for c in self.found:
            out[c["name"]] = c["fraction"]
        return out

    @property
    def background_fraction(self) -> float:
        """The share of background pixels."""
        return self._n.background_fraction

    @property
    def source(self) -> Optional[str]:
        """The image file, when the image came from one."""
        return self._n.source

    @property
    def library_seconds(self) -> float:
        """Seconds the Rust library's ``Segmenter::segment`` took for this image."""
        return self._n.library_seconds

    def masks(self) -> Dict[str, np.ndarray]:
        """Per class found: its ``H×W`` bool mask."""
        labels = self.labels
        return {c["name"]: labels == c["label"] for c in self.found}

    def to_coco_rle(self) -> List[Dict[str, Any]]:
        """Per class found: ``{"label", "size": [h, w], "counts", "area"}``, COCO's compressed RLE exactly as pycocotools writes it."""
        return self._n.to_coco_rle()

    def as_hf(self) -> List[Dict[str, Any]]:
        """The shape of transformers' image-segmentation pipeline output.

        Per class found: ``{"label": name, "score": mean winning score,
        "mask": PIL.Image}`` (mode ``L``, 255 inside the class, 0 outside).
        Needs Pillow.
        """
        from PIL import Image

        labels = self.labels
        return [
            {
                "label": c["name"],
                "score": float(c["mean_score"]),
                "mask": Image.fromarray(((labels == c["label"]) * 255).astype(np.uint8), mode="L"),
            }
            for c in self.found
        ]

    @property
    def explanations(self) -> Optional[Dict[str, Dict[str, Any]]]:
        """Per class found, with ``explain=True`` (else ``None``): what won its pixels.

        ``{"pixels", "support": [{"image", "name", "pixels", "prototypes":
        [{"kind", "id", "pixels"}]}], "thumbnails": [{"caption", "jpeg"}]}``:
        the support images and prototypes that won the most of its pixels,
        and the explain sheet's thumbnails of the support images that voted
        for it (JPEG bytes; ``PIL.Image.open(io.BytesIO(t["jpeg"]))``).
        """
        rows = self._n.explain_rows()
        if rows is None:
            return None
        thumbs = {name: m for name, _label, m in rows}
        return {
            c["name"]: {
                "pixels": c["pixels"],
                "support": c["support"],
                "thumbnails": [
                    {"caption": cap, "jpeg": jpeg} for cap, jpeg in thumbs.get(c["name"], [])
                ],
            }
            for c in self.found
        }

    def overlay(self, alpha: float = 0.5) -> np.ndarray:
        """The overlay the CLI writes (class colours at ``alpha`` and a legend), as an ``H×W×3`` uint8 array."""
        raw = self._n.overlay_bytes(alpha)
        return np.frombuffer(raw, dtype=np.uint8).reshape(self.height, self.width, 3)

    def explain_sheet(self) -> Optional[np.ndarray]:
        """The explain sheet the CLI writes with ``--explain`` (an ``H×W×3`` uint8 array), or ``None`` without explanations."""
        sheet = self._n.explain_sheet_bytes()
        if sheet is None:
            return None
        raw, w, h = sheet
        return np.frombuffer(raw, dtype=np.uint8).reshape(h, w, 3)

    def save(
        self, out_dir: Union[str, "os.PathLike[str]"], overlay: bool = True, name: Optional[str] = None
    ) -> Optional[Dict[str, Any]]:
        """Write the files ``ovdiff-bank segment`` writes for this image into ``out_dir``.

        ``NAME.png`` (labels), ``NAME.overlay.png``, ``NAME.explain.png`` (with
        explanations) and ``NAME.json``, whose content is returned. ``NAME`` is
        ``name``, else the image file's name without its extension, else
        ``"image"``. With ``overlay=False`` only the label PNG is written (and
        ``None`` returned).
        """
        stem = name if name is not None else self._n.stem("image")
        report = self._n.save(os.fspath(out_dir), stem, overlay)
        return None if report is None else json.loads(report)


class _Counter:
    """A plain progress counter on stderr, for when tqdm is not installed."""

    def __init__(self, total: Optional[int]) -> None:
        self.total, self.n = total, 0

    def update(self, k: int = 1) -> None:
        self.n += k
        of = f"/{self.total}" if self.total is not None else ""
        sys.stderr.write(f"\rsegmented {self.n}{of} images")
        sys.stderr.flush()

    def close(self) -> None:
        sys.stderr.write("\n")
        sys.stderr.flush()


def _progress_bar(total: Optional[int]) -> Any:
    try:
        from tqdm import tqdm  # type: ignore[import-not-found]
    except ImportError:
        return _Counter(total)
    return tqdm(total=total, unit="image")


class Segmenter:
    """A bank opened for queries, with its models loaded once; share it between threads.

    Args:
        bank: a bank name (under ``<home>/banks``), a bank folder, or a ``.ovbank`` file.
        home: ``<home>`` (models, ONNX Runtime, banks); default ``$OVDIFF_HOME``,
            else ``${XDG_DATA_HOME:-~/.local/share}/ovdiff-bank``, as the CLI.
        threads: ONNX Runtime intra-op threads (default: all cores).
        encoders: encoder bundles (names under ``<home>/models`` or folders);
            default: the installed bundles whose fingerprints the bank recorded.

    Raises:
        BankNotFound: nothing at ``bank``. BankLocked, Error: it cannot be opened.
    """

    def __init__(
        self,
        bank: Union[str, "os.PathLike[str]"],
        *,
        home: Optional[Union[str, "os.PathLike[str]"]] = None,
        threads: Optional[int] = None,
        encoders: Optional[Sequence[str]] = None,
    ) -> None:
        self._n = _native.Segmenter(
            os.fspath(bank),
            None if home is None else os.fspath(home),
            threads,
            None if encoders is None else [os.fspath(e) for e in encoders],
        )

    def __repr__(self) -> str:
        return f"<Segmenter {self.bank}>"

    @property
    def bank(self) -> str:
        """The bank's path."""
        return self._n.bank

    def class_names(self) -> List[str]:
        """The bank's classes, sorted."""
        return self._n.class_names()

    def segment(
        self,
        image: ImageLike,
        classes: Classes = None,
        engine: str = "auto",
        explain: bool = False,
        windows: Optional[Dict[str, Any]] = None,
        preset: Optional[str] = None,
    ) -> Segmentation:
        """Segment one image; the GIL is released while it runs.

        Args:
            image: an ``H×W×3`` uint8 RGB ndarray, a PIL.Image, or a PNG/JPEG path.
            classes: the candidate classes, in label order (a list, or
                ``"a,b,c"``); ``None``: every class of the bank.
            engine: ``auto``, ``exact``, ``ivf`` or ``hnsw`` (as ``--engine``).
            explain: also gather the explain sheet's support thumbnails.
            windows: the window layout, ``{"short_side": 448, "sizes": [448, 336],
                "stride": 224, "include_whole": True}`` (OVDiff's, the default);
                smaller layouts trade accuracy for time.
            preset: ``"accurate"`` (OVDiff's windows), ``"balanced"`` or
                ``"fast"`` (one forward pass), as ``--preset``; not with
                ``windows``.

        Raises:
            ValueError: a wrong dtype, shape, channel count, or an empty or
                non-contiguous array. UnknownClass, EncoderMismatch, BadImage, Error.
        """
        native = self._n.segment(
            native_image(image), _class_list(classes), engine, explain, _layout(windows), preset
        )
        return Segmentation(native)

    def segment_many(
        self,
        images: Iterable[ImageLike],
        classes: Classes = None,
        engine: str = "auto",
        explain: bool = False,
        progress: bool = False,
        windows: Optional[Dict[str, Any]] = None,
        preset: Optional[str] = None,
    ) -> Iterator[Segmentation]:
        """Segment images one after another, yielding each result as it is done.

        The bank, models and plan are loaded once, by the first image. With
        ``progress=True``, a tqdm bar when tqdm is installed, else a counter on
        stderr.
        """
        names = _class_list(classes)
        layout = _layout(windows)
        total = len(images) if hasattr(images, "__len__") else None  # type: ignore[arg-type]
        bar = _progress_bar(total) if progress else None
        try:
            for image in images:
                native = self._n.segment(
                    native_image(image), names, engine, explain, layout, preset
                )
                if bar is not None:
                    bar.update(1)
                yield Segmentation(native)
        finally:
            if bar is not None:
                bar.close()


