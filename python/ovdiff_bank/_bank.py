"""Banks: :class:`Bank` (open, create, add, show, remove, export) and :class:`BankFile` (a ``.ovbank`` file)."""

from __future__ import annotations

import json
import os
from typing import Any, Dict, List, Optional, Sequence, Union

from . import _native
from ._images import native_image

PathLike = Union[str, "os.PathLike[str]"]

#: What ``Bank.add`` records as the source of a support set given as arrays.
ARRAYS_SOURCE = "python arrays"


def _default_source(images: Sequence[Any]) -> str:
    """The folder of the images when they all lie in one (as ``add --images DIR`` records it), else :data:`ARRAYS_SOURCE`."""
    parents = set()
    for image in images:
        if not isinstance(image, (str, os.PathLike)):
            return ARRAYS_SOURCE
        parents.add(os.path.dirname(os.path.abspath(os.fspath(image))))
    return parents.pop() if len(parents) == 1 else ARRAYS_SOURCE


class Bank:
    """A bank opened for reading and writing; its lock is held until :meth:`close` (or ``with`` ends).

    Open one with :meth:`open` or :meth:`create`.
    """

    def __init__(self, native: "_native.Bank") -> None:
        self._n = native

    @classmethod
    def open(cls, bank: PathLike, *, home: Optional[PathLike] = None) -> "Bank":
        """Open an existing bank: a name under ``<home>/banks``, or a folder.

        Raises:
            BankNotFound: there is none. BankLocked: another process has it open.
        """
        return cls(_native.Bank.open(os.fspath(bank), None if home is None else os.fspath(home)))

    @classmethod
    def create(cls, path: PathLike, *, home: Optional[PathLike] = None) -> "Bank":
        """Create a new, empty bank at ``path`` (a name under ``<home>/banks``, or a folder that does not exist)."""
        return cls(_native.Bank.create(os.fspath(path), None if home is None else os.fspath(home)))

    def __enter__(self) -> "Bank":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<Bank {self.path}>"

    @property
    def path(self) -> str:
        """The bank's folder."""
        return self._n.path

    def close(self) -> None:
        """Release the bank (and its lock); later calls raise ``ValueError``."""
        self._n.close()

    def add(
        self,
        name: str,
        images: Union[PathLike, Sequence[Any]],
        *,
        stuff: bool = False,
        replace: bool = False,
        parts: int = 32,
        seed: int = 42,
        encoders: Optional[Sequence[str]] = None,
        source: Optional[str] = None,
        names: Optional[Sequence[Optional[str]]] = None,
    ) -> Dict[str, Any]:
        """Learn class ``name`` from support images and write it: the pipeline of ``ovdiff-bank add NAME --images DIR``.

        Args:
            images: a folder (read as ``add --images`` reads it), or a list of
                image paths, PIL images and ``H×W×3`` uint8 arrays, used in
                this order (arrays are stored losslessly as PNG on the way).
            stuff: a stuff class (sky, grass): foreground prototypes only.
            replace: rebuild the class when it exists.
            parts, seed, encoders: as ``--parts``, ``--seed``, ``--encoder``.
            source: what the class records as its support folder; default:
                the images' folder when they all lie in one, else ``"python arrays"``.
                A class built from the same images, in the same order, with the
                same source and names has the same content digest (``verify
                --bank``) as the CLI's.
            names: per image, the ``*.png`` file name an array is stored (and
                recorded) under; default ``NNN.png`` (its position). Paths keep
                their own names.

        Returns:
            ``add --json``'s report.
        """
        if isinstance(images, (str, os.PathLike)):
            folder = os.fspath(images)
            args: List[Any] = []
            src = folder if source is None else source
            if source is not None:
                raise ValueError("source= is for a list of images; a folder is recorded as it is given")
        else:
            items = list(images)
            if not items:
                raise ValueError(f"no support images given for class {name!r}")
            args = [native_image(i) for i in items]
            src = source if source is not None else _default_source(items)
            if names is not None and len(names) != len(items):
                raise ValueError(f"{len(names)} names given for {len(items)} images")
        report = self._n.add(
            name,
            args,
            src,
            stuff,
            replace,
            parts,
            seed,
            None if encoders is None else [os.fspath(e) for e in encoders],
            None if names is None else [n or "" for n in names],
        )
        return json.loads(report)

    def list(self) -> List[Dict[str, Any]]:
        """The classes as ``ovdiff-bank list --json`` lists them."""
        return json.loads(self._n.list_json())

    def classes(self) -> List[str]:
        """The class names, sorted."""
        return [row["name"] for row in self.list()]

    def show(self, name: str) -> Dict[str, Any]:
        """One class as ``ovdiff-bank show NAME --json`` shows it; ``UnknownClass`` when absent."""
        return json.loads(self._n.show_json(name))

    def remove(self, name: str) -> None:
        """Remove a class; ``UnknownClass`` when absent."""
        self._n.remove(name)

    def export(self, path: PathLike, classes: Optional[Sequence[str]] = None) -> Dict[str, int]:
        """Write classes (default: all) into a ``.ovbank`` file, as ``ovdiff-bank export -o PATH``."""
        c, e, p, t, b = self._n.export(
            os.fspath(path), None if classes is None else list(classes)
        )
        return {"classes": c, "encoders": e, "prototypes": p, "thumbnails": t, "bytes": b}

    def verify(self) -> Dict[str, Any]:
        """``ovdiff-bank verify --bank --json``'s report: every class read back, with its content ``digest``."""
        return json.loads(self._n.verify_json())


class BankFile:
    """A ``.ovbank`` file, opened (header checked) and mapped; pass it to :class:`Segmenter` by path."""

    def __init__(self, path: PathLike) -> None:
        self._n = _native.BankFile(os.fspath(path))

    def __repr__(self) -> str:
        return f"<BankFile {self.path}>"

    @property
    def path(self) -> str:
        """The file's path."""
        return self._n.path

    @property
    def classes(self) -> List[str]:
        """Its class names, in the file's order."""
        return self._n.classes

    def verify(self) -> None:
        """Check every checksum (``ovdiff-bank verify FILE``); raises :class:`Error` naming the first damage."""
        self._n.verify()
