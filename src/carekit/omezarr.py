"""OME-Zarr images: open level 0 lazily, create and describe new ones.

Reading accepts OME-NGFF 0.4 (``multiscales`` in ``.zattrs``, zarr v2) and 0.5
(``multiscales`` under the ``ome`` key of ``zarr.json``, zarr v3), and plain zarr
arrays when the axes are given. Writing makes OME-NGFF 0.4 on zarr v2, which
napari and Fiji open: one level ``"0"``, axes in the order t, c, z, y, x, and a
``scale`` transformation in micrometres. Arrays are never loaded whole: readers
slice the returned zarr array, writers fill it chunk by chunk.
"""

from __future__ import annotations

import contextlib
import itertools
import math
import os
import shutil
from pathlib import Path

import numpy as np

from carekit.axes import check_axes
from carekit.errors import CarekitError
from carekit.io import remove_stale_partials

ORDER = "TCZYX"  # the axis order OME-NGFF 0.4 requires
KIND = {"T": "time", "C": "channel", "Z": "space", "Y": "space", "X": "space"}
TO_MICROMETER = {"angstrom": 1e-4, "nanometer": 1e-3, "micrometer": 1.0, "millimeter": 1e3, "meter": 1e6}
CHUNK_BYTES = 2 * 2**20  # target size of a written chunk
COPY_VOXELS = 16 * 2**20  # voxels per slab when copying an array into a new image


def is_zarr(path: str | Path) -> bool:
    """True for a folder that is a zarr group or array (named ``*.zarr`` or holding zarr metadata)."""
    p = Path(path)
    if not p.is_dir():
        return False
    return p.suffix.lower() == ".zarr" or any((p / f).exists() for f in (".zgroup", ".zarray", ".zattrs", "zarr.json"))


def open_omezarr(path: str | Path, axes: str | None = None, *, fallback: str | None = None,
                 allow_missing: bool = False):  # fmt: skip
    """Open level 0 of an OME-Zarr image without loading it.

    Parameters
    ----------
    path : str or Path
        An OME-Zarr image folder, or a plain zarr array (then ``axes`` is required).
    axes : str, optional
        The array's axes; for an OME-Zarr image they must agree with the file's.
    fallback : str, optional
        Axes for a plain zarr array when ``axes`` is not given and the length fits.
    allow_missing : bool
        Accept chunks missing from the store (read as the fill value); by default they are an
        error, since zarr would silently read a lost chunk as zeros.

    Returns
    -------
    array : zarr.Array
        Level 0, sliced lazily.
    axes : str
        Carekit axes letters, e.g. ``"CZYX"``.
    spacing : dict or None
        Voxel size in micrometres per spatial axis letter, as :func:`carekit.io.read_spacing` gives.
    """
    import zarr

    p = Path(path)
    try:
        node = zarr.open(str(p), mode="r")
    except Exception as e:  # zarr raises several types for missing or damaged stores
        raise CarekitError(f"{p}: cannot open as zarr ({type(e).__name__}: {e}); check the --input path") from None
    if isinstance(node, zarr.Array):
        axes = axes or (fallback if fallback and len(fallback) == node.ndim else None)
        if axes is None:
            raise CarekitError(f"{p}: plain zarr array without OME metadata; pass --axes, e.g. --axes ZYX")
        check_complete(node, p, allow_missing)
        return node, check_axes(axes, node.ndim, what=str(p)), None
    multiscale = first_multiscale(dict(node.attrs), p)
    level = multiscale["datasets"][0]
    try:
        array = node[level["path"]]
    except Exception:  # zarr raises several types for missing or malformed keys
        raise CarekitError(
            f"{p}: level '{level['path']}' named in the OME metadata is missing; the image is damaged"
        ) from None
    if not isinstance(array, zarr.Array):
        raise CarekitError(f"{p}: level '{level['path']}' is a group, not an array; the image is damaged")
    check_complete(array, p, allow_missing)
    file_axes = ome_axes(multiscale.get("axes", []), array.ndim, p)
    if axes is not None and check_axes(axes, array.ndim, what=str(p)) != file_axes:
        raise CarekitError(f"{p}: --axes {axes} disagree with the file's OME axes {file_axes}; drop --axes")
    return array, file_axes, ome_spacing(multiscale, level, file_axes)


def check_complete(array, path: Path, allow_missing: bool) -> None:
    """Refuse an array with chunks missing from its store: zarr would read them as the fill value."""
    if allow_missing or array.size == 0:
        return
    try:
        stored, total = array.nchunks_initialized, array.nchunks
    except Exception as e:  # a store that cannot be listed: let reading find out
        del e
        return
    if stored < total:
        raise CarekitError(f"{path}: {total - stored} of {total} chunks are missing (a failed copy, or written "
                           "without empty chunks) and would read as zeros; copy the image again, or pass "
                           "--allow-missing-chunks if they are empty on purpose")  # fmt: skip


def first_multiscale(attrs: dict, path: Path) -> dict:
    """The first ``multiscales`` entry of OME-NGFF 0.5 (under ``ome``) or 0.4 attributes."""
    meta = attrs.get("ome", attrs)
    scales = meta.get("multiscales") if isinstance(meta, dict) else None
    first = scales[0] if isinstance(scales, list) and scales and isinstance(scales[0], dict) else {}
    datasets = first.get("datasets")
    valid = isinstance(datasets, list) and datasets and isinstance(datasets[0], dict)
    if not valid or not isinstance(datasets[0].get("path"), str):
        raise CarekitError(
            f"{path}: zarr group without OME multiscales metadata; point --input at an OME-Zarr image or a zarr array"
        )
    return scales[0]


def ome_axes(entries: list, ndim: int, path: Path) -> str:
    """Carekit letters for OME axis entries (dicts with ``name``, or plain names in old files)."""
    if not isinstance(entries, list):
        raise CarekitError(f"{path}: OME metadata 'axes' must be a list; the image is damaged")
    names = [str(e.get("name") if isinstance(e, dict) else e).lower() for e in entries]
    if len(names) != ndim:
        raise CarekitError(f"{path}: OME metadata names {len(names)} axes but level 0 has {ndim} dimensions")
    for name in names:
        if name.upper() not in ORDER or len(name) != 1:
            raise CarekitError(f"{path}: OME axis '{name}' is not supported; carekit reads axes t, c, z, y, x")
    return check_axes("".join(names).upper(), ndim, what=str(path))


def ome_spacing(multiscale: dict, level: dict, axes: str) -> dict[str, float] | None:
    """Micrometres per voxel along Z, Y, X from the level's (and the multiscale's) ``scale``."""
    scale = np.ones(len(axes))
    for transforms in (level.get("coordinateTransformations", []), multiscale.get("coordinateTransformations", [])):
        for t in transforms if isinstance(transforms, list) else ():
            if isinstance(t, dict) and t.get("type") == "scale" and "scale" in t:
                try:
                    factors = np.asarray(t["scale"], float).reshape(len(axes))
                except (TypeError, ValueError):
                    raise CarekitError(f"scale {t['scale']!r} in the OME metadata does not fit axes {axes}") from None
                if not np.isfinite(factors).all() or (factors <= 0).any():
                    raise CarekitError(f"scale {t['scale']!r} in the OME metadata must be positive numbers")
                scale = scale * factors
    units = {}
    for letter, entry in zip(axes, multiscale.get("axes", []), strict=True):
        if isinstance(entry, dict) and entry.get("unit"):
            units[letter] = TO_MICROMETER.get(str(entry["unit"]).lower(), 1.0)
    spacing = {
        a: float(s) * units.get(a, 1.0)
        for a, s in zip(axes, scale, strict=True)
        if a in "ZYX" and (a in units or s != 1)
    }
    return spacing or None


def canonical_axes(axes: str, *, what: str = "output") -> str:
    """``axes`` reordered to t, c, z, y, x as OME-NGFF 0.4 requires (S has no OME equivalent)."""
    axes = check_axes(axes, what=what)
    if "S" in axes:
        raise CarekitError(f"{what}: OME-Zarr has no sample axis S; name the image series T instead")
    return "".join(a for a in ORDER if a in axes)


def choose_chunks(
    shape: tuple[int, ...], axes: str, *, limit: dict[str, int] | None = None, itemsize: int = 4
) -> tuple[int, ...]:
    """Chunks of about :data:`CHUNK_BYTES`: one time point, every channel, halved spatial extents.

    ``limit`` caps chosen axes (e.g. the block size a writer processes, or 1 for axes
    written one index at a time).
    """
    limit = limit or {}
    chunks = [1 if a == "T" else s for a, s in zip(axes, shape, strict=True)]
    chunks = [min(c, limit.get(a, c)) for a, c in zip(axes, chunks, strict=True)]
    spatial = [i for i, a in enumerate(axes) if a in "ZYX" and limit.get(a) != 1]
    while math.prod(chunks) * itemsize > CHUNK_BYTES:
        i = max(spatial, key=lambda k: chunks[k])
        if chunks[i] == 1:
            break
        chunks[i] = math.ceil(chunks[i] / 2)
    return tuple(chunks)


def create_image(path: str | Path, shape: tuple[int, ...], chunks: tuple[int, ...], dtype="float32"):
    """Create an empty zarr v2 group at ``path`` with level ``"0"`` and return that array."""
    import numcodecs
    import zarr

    group = zarr.open_group(str(path), mode="w", zarr_format=2)
    return group.create_array(
        "0",
        shape=shape,
        chunks=chunks,
        dtype=dtype,
        fill_value=0,
        compressors=numcodecs.Blosc(cname="zstd", clevel=3, shuffle=numcodecs.Blosc.BITSHUFFLE),
        chunk_key_encoding={"name": "v2", "separator": "/"},
        config={"write_empty_chunks": True},  # every chunk on disk: a missing one means a damaged image
    )


def write_multiscales(
    path: str | Path, axes: str, spacing: dict[str, float] | None = None, *, name: str | None = None
) -> None:
    """Describe the level ``"0"`` at ``path`` with OME-NGFF 0.4 metadata."""
    import zarr

    spacing = spacing or {}
    entries = []
    for a in axes:
        entry = {"name": a.lower(), "type": KIND[a]}
        if a in spacing:
            entry["unit"] = "micrometer"
        entries.append(entry)
    scale = [float(spacing.get(a, 1.0)) for a in axes]
    group = zarr.open_group(str(path), mode="r+", zarr_format=2)
    group.attrs["multiscales"] = [
        {
            "version": "0.4",
            "name": name or Path(path).stem,
            "axes": entries,
            "datasets": [{"path": "0", "coordinateTransformations": [{"type": "scale", "scale": scale}]}],
        }
    ]


def write_omezarr(path: str | Path, data, axes: str, *, spacing: dict[str, float] | None = None,
                  chunks: tuple[int, ...] | None = None) -> Path:  # fmt: skip
    """Write ``data`` (any sliceable array: numpy, memmap, zarr) as an OME-Zarr 0.4 image, slab by slab.

    Axes are stored in OME order (t, c, z, y, x) and the data converted to float32.
    The image appears at ``path`` only once complete.

    Examples
    --------
    >>> write_omezarr("restored.zarr", volume, "ZYX", spacing={"Z": 1.0, "Y": 0.2, "X": 0.2})  # doctest: +SKIP
    """
    p = Path(path)
    axes = check_axes(axes, len(data.shape), what=str(p))
    order = canonical_axes(axes, what=str(p))
    perm = [axes.index(a) for a in order]
    shape = tuple(data.shape[i] for i in perm)
    remove_stale_partials(p)
    tmp = p.with_name(f".{p.name}.{os.getpid()}.partial")
    try:
        out = create_image(tmp, shape, chunks or choose_chunks(shape, order))
        for box in slabs(shape, out.chunks, COPY_VOXELS):
            src = tuple(box[perm.index(i)] for i in range(len(axes)))
            out[box] = np.transpose(np.asarray(data[src]), perm).astype(np.float32, copy=False)
        write_multiscales(tmp, order, spacing, name=p.stem)
        if p.exists():
            shutil.rmtree(p)
        os.replace(tmp, p)
    except BaseException:
        with contextlib.suppress(OSError):
            shutil.rmtree(tmp)
        raise
    return p


def slabs(shape: tuple[int, ...], chunks: tuple[int, ...], max_voxels: int) -> list[tuple[slice, ...]]:
    """Chunk-aligned boxes covering ``shape``, each grown from the last axis up to ``max_voxels`` voxels."""
    box = list(chunks)
    for i in reversed(range(len(shape))):
        others = math.prod(box) // box[i]
        fits = max(1, max_voxels // max(others, 1)) // chunks[i] * chunks[i]
        box[i] = min(shape[i], max(chunks[i], fits))
        if box[i] < shape[i]:
            break
    starts = [range(0, s, b) for s, b in zip(shape, box, strict=True)]
    return [
        tuple(slice(a, min(a + b, s)) for a, b, s in zip(corner, box, shape, strict=True))
        for corner in itertools.product(*starts)
    ]
