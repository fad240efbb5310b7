"""SHA-256 manifests: ``<weights stem>.sha256`` beside an export's weights, in ``sha256sum``'s format (so
``sha256sum -c Name2026Title.sha256`` checks the folder too), written with the files it lists and checked before
robust-sabn loads any of them."""
from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable
from pathlib import Path

from .errors import CheckpointError
from .io import atomic_write_text, staged

MANIFEST_SUFFIX = ".sha256"


def manifest_path(weights: str | os.PathLike) -> Path:
    """The manifest of the export whose weights are ``weights``: ``X.pt`` or ``X.safetensors`` -> ``X.sha256``."""
    weights = Path(weights)
    return weights.with_name(weights.stem + MANIFEST_SUFFIX)


def sha256_of(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def write_manifest(path: str | os.PathLike, files: Iterable[str | os.PathLike]) -> Path:
    """Write the manifest ``path`` of ``files`` (in its folder), hashing what each will hold: inside an
    :func:`~robust_sabn.io.all_or_nothing` block, the content written there and not yet renamed into place."""
    path = Path(path)
    lines = [f"{sha256_of(staged(file))}  {Path(file).name}\n" for file in files]
    return atomic_write_text(path, "".join(lines))


def check_manifest(path: str | os.PathLike, files: Iterable[str | os.PathLike]) -> None:
    """Check ``files`` against the manifest ``path``, when there is one (exports of earlier versions have none): a
    file it lists with another SHA-256 is a one-line :class:`CheckpointError`."""
    path = Path(path)
    if not path.is_file():
        return
    listed = {}
    for line in path.read_text(errors="replace").splitlines():
        digest, _, name = line.partition("  ")
        listed[name.strip()] = digest.strip()
    for file in map(Path, files):
        if file.name in listed and sha256_of(file) != listed[file.name]:
            raise CheckpointError(f"{file} does not match its SHA-256 in {path}: the file was changed or damaged "
                                  "since it was exported; download or export it again")
