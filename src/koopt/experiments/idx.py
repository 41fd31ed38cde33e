"""Reader (and a small writer) for the IDX format of the MNIST files (LeCun et al.).

Layout: 2 zero bytes, a type byte, the number of dimensions, then one big-endian
uint32 per dimension, then the data in big-endian order. Files may be gzip-compressed
(``.gz``). Every error names the file and what was expected.
"""

from __future__ import annotations

import gzip
import os
import struct
from pathlib import Path

import numpy as np

__all__ = ["DataError", "IDXError", "read_idx", "write_idx", "find_idx"]


class DataError(ValueError):
    """Input data missing or unusable; the message is one line for the user."""


class IDXError(DataError):
    """A file is not a valid IDX file."""


#: IDX type byte -> numpy big-endian dtype
IDX_TYPES: dict[int, str] = {
    0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8",
}
_TYPE_OF = {np.dtype(v).newbyteorder("=").str: k for k, v in IDX_TYPES.items()}


def _read_bytes(path: Path) -> bytes:
    try:
        if path.name.endswith(".gz"):
            with gzip.open(path, "rb") as fh:
                return fh.read()
        return path.read_bytes()
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    except (OSError, EOFError, gzip.BadGzipFile) as exc:
        raise IDXError(f"{path}: cannot read ({exc}); expected an IDX file, raw or gzip") from None


def read_idx(path: str | os.PathLike[str], *, ndim: int | None = None,
             dtype_code: int | None = None) -> np.ndarray:
    """Read an IDX file (raw or .gz) into a numpy array in native byte order.

    ``ndim`` / ``dtype_code`` (e.g. 3 and 0x08 for MNIST images) are checked when given.
    Raises IDXError naming the file on a bad magic number, wrong type or truncated data.
    """
    p = Path(path)
    raw = _read_bytes(p)
    want = ""
    if dtype_code is not None and ndim is not None:
        want = f" (0x0000{dtype_code:02X}{ndim:02X})"
    if len(raw) < 4:
        raise IDXError(f"{p}: too short ({len(raw)} bytes) for an IDX header; expected an "
                       f"IDX magic number{want}")
    magic = struct.unpack(">I", raw[:4])[0]
    zero, code, nd = raw[0:2], raw[2], raw[3]
    if zero != b"\x00\x00" or code not in IDX_TYPES or nd == 0:
        raise IDXError(f"{p}: bad magic number 0x{magic:08X}; expected an IDX magic number"
                       f"{want or ' (0x000008NN for unsigned bytes)'}")
    if dtype_code is not None and code != dtype_code:
        raise IDXError(f"{p}: IDX data type 0x{code:02X}, expected 0x{dtype_code:02X}")
    if ndim is not None and nd != ndim:
        raise IDXError(f"{p}: IDX file has {nd} dimensions, expected {ndim}")
    header = 4 + 4 * nd
    if len(raw) < header:
        raise IDXError(f"{p}: truncated header; expected {nd} dimension sizes")
    dims = struct.unpack(f">{nd}I", raw[4:header])
    dt = np.dtype(IDX_TYPES[code])
    need = int(np.prod(dims, dtype=np.int64)) * dt.itemsize
    have = len(raw) - header
    if have != need:
        raise IDXError(f"{p}: expected {need} data bytes for shape {tuple(dims)}, found {have}")
    arr = np.frombuffer(raw, dtype=dt, offset=header).reshape(dims)
    return arr.astype(dt.newbyteorder("="))


def write_idx(path: str | os.PathLike[str], array: np.ndarray) -> Path:
    """Write ``array`` as an IDX file (gzip if the name ends in .gz)."""
    a = np.ascontiguousarray(array)
    key = a.dtype.newbyteorder("=").str
    if key not in _TYPE_OF:
        raise ValueError(f"dtype {a.dtype} has no IDX type code")
    if a.ndim < 1 or a.ndim > 255:
        raise ValueError("IDX needs 1..255 dimensions")
    code = _TYPE_OF[key]
    data = struct.pack(">BBBB", 0, 0, code, a.ndim) + struct.pack(f">{a.ndim}I", *a.shape)
    data += a.astype(np.dtype(IDX_TYPES[code])).tobytes()
    p = Path(path)
    if p.name.endswith(".gz"):
        with gzip.open(p, "wb") as fh:
            fh.write(data)
    else:
        p.write_bytes(data)
    return p


def find_idx(data_dir: str | os.PathLike[str], stem: str) -> Path:
    """Locate ``stem`` (e.g. ``train-images-idx3-ubyte``) in ``data_dir``, raw or .gz.

    Also accepts the common ``train-images.idx3-ubyte`` spelling. Raises DataError naming
    the missing file.
    """
    d = Path(data_dir)
    if not d.is_dir():
        raise DataError(f"--data-dir {d}: not a directory; expected a folder with the four "
                        "MNIST IDX files")
    alt = stem.replace("-idx", ".idx")
    for name in (stem, stem + ".gz", alt, alt + ".gz"):
        cand = d / name
        if cand.is_file():
            return cand
    raise DataError(f"{d / stem}: missing; expected the MNIST IDX file {stem} (raw or .gz) "
                    f"in {d}")
