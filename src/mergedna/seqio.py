"""Sequence I/O: the one place that opens, reads and writes files.

* **Opening**: :func:`open_binary` / :func:`open_text` sniff gzip and bgzip from the magic bytes
  (never the suffix); text is UTF-8 with an optional byte-order mark. :func:`read_errors` turns
  what a damaged file raises (truncated or corrupt gzip, undecodable bytes, a missing file) into
  :class:`SequenceFileError` naming the file.
* **FASTA**: :func:`iter_fasta_pieces` streams a file in blocks and yields the encoded bases of
  each record piece by piece (the genome cache writes them straight to disk);
  :func:`iter_fasta` joins them into whole records. A bad character is reported with file,
  record, 1-based position in the record and line.
* **Coordinates**: :func:`parse_region` (``name:start-end``, 1-based inclusive as in samtools),
  :func:`union_intervals`, :func:`chunk_layout` / :func:`chunk_starts` (overlapping windows, the
  last aligned to the end).
* **Batches**: :func:`pad_batch` pads id arrays into ``(B, N)`` ids and a mask.
* **Writing**: :func:`atomic_path`, :func:`write_text_atomic`, :func:`write_json_atomic` and
  :func:`atomic_write_dir` write to a temporary sibling named ``.<name>.tmp-<pid>-<tag>`` and
  rename it into place; files and folders are created with ``open``/``mkdir``, so their modes
  follow the umask (0644/0755 by default). :func:`remove_stale_temps` deletes the temporaries a
  killed process left behind (those whose process is gone).

Errors: :class:`SequenceFileError` (a ``ValueError``) is the one error type for bad input; it
carries ``file``, ``record``, ``line`` and ``position`` (each ``None`` when unknown), and
:class:`~mergedna.vocab.InvalidSequenceError` is one of them.
"""

from __future__ import annotations

import contextlib
import errno
import gzip
import io
import json
import os
import re
import secrets
import shutil
import zlib
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import numpy as np
import torch

from .vocab import PAD, InvalidSequenceError, SequenceFileError, encode_bytes

__all__ = ["SequenceFileError", "InvalidSequenceError", "open_binary", "open_text", "read_errors", "is_gzip",
           "iter_fasta_pieces", "iter_fasta_records", "iter_fasta", "record_name", "parse_region", "union_intervals", "chunk_layout", "chunk_starts",
           "pad_batch", "atomic_path", "write_text_atomic", "write_json_atomic", "atomic_write_dir",
           "remove_stale_temps", "follow_umask"]

GZIP_MAGIC = b"\x1f\x8b"
CHUNK_BYTES = 1 << 24  # 16 MiB of FASTA text per read
_WHITESPACE = b" \t\r\n"
_WS_IDS = np.frombuffer(_WHITESPACE, dtype=np.uint8)
_REGION = re.compile(r"(?P<name>.+):(?P<start>[\d,]+)-(?P<end>[\d,]+)")
_TEMP = re.compile(r"^\..+\.tmp-(?P<pid>\d+)-[0-9a-f]+$")


# ---- opening and reading -------------------------------------------------------------------------


def is_gzip(path: str | os.PathLike) -> bool:
    """True when the file starts with the gzip magic bytes (gzip and bgzip alike)."""
    with read_errors(path), open(path, "rb") as fh:
        return fh.read(2) == GZIP_MAGIC


def _open_stream(path: str | os.PathLike):
    """``(content stream, file on disk)``: closing the stream closes the file too."""
    with read_errors(path):
        raw = open(path, "rb")
        try:
            gz = raw.read(2) == GZIP_MAGIC
            raw.seek(0)
        except BaseException:
            raw.close()
            raise
    if not gz:
        return raw, raw
    stream = gzip.GzipFile(fileobj=raw, mode="rb")
    stream.myfileobj = raw  # GzipFile.close() closes its myfileobj
    return stream, raw


class _Source:
    """A binary content stream with ``raw_position()``: bytes consumed from the file on disk."""

    def __init__(self, stream, raw):
        self.stream, self.raw = stream, raw

    def read(self, n: int = -1) -> bytes:
        return self.stream.read(n)

    def raw_position(self) -> int:
        return self.raw.tell()

    def close(self) -> None:
        self.stream.close()
        self.raw.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def open_binary(path: str | os.PathLike) -> _Source:
    """The file's content, decompressed when it is gzip or bgzip (sniffed from the magic bytes;
    ``gzip`` reads multi-member streams, so bgzip, a series of gzip blocks, is covered)."""
    return _Source(*_open_stream(path))


def open_text(path: str | os.PathLike, newline: str | None = None) -> io.TextIOBase:
    """UTF-8 text (a leading byte-order mark is dropped), decompressed when gzip/bgzip (sniffed)."""
    return io.TextIOWrapper(_open_stream(path)[0], encoding="utf-8-sig", newline=newline)


def _reason(err: BaseException) -> str:
    if isinstance(err, EOFError):
        return "the compressed stream ends early (truncated gzip file)"
    if isinstance(err, gzip.BadGzipFile):
        return f"not a valid gzip file ({err})"
    if isinstance(err, zlib.error):
        return f"corrupt gzip data ({err})"
    if isinstance(err, UnicodeDecodeError):
        return f"not UTF-8 text (byte 0x{err.object[err.start]:02x}); is it a binary file?"
    if isinstance(err, OSError):
        return err.strerror or str(err)
    return str(err)


@contextlib.contextmanager
def read_errors(path: str | os.PathLike | None, record: str | None = None):
    """Re-raise read failures inside the block as :class:`SequenceFileError` naming ``path``."""
    try:
        yield
    except SequenceFileError:
        raise
    except (OSError, EOFError, zlib.error, UnicodeDecodeError) as err:
        raise SequenceFileError(f"cannot read: {_reason(err)}", file=path, record=record) from err


# ---- FASTA ---------------------------------------------------------------------------------------


def _line_of(buf: bytes, line0: int, index: int) -> int:
    """1-based line number of ``buf[index]`` when ``buf`` starts at line ``line0 + 1``."""
    return line0 + buf.count(b"\n", 0, index) + 1


def iter_fasta_pieces(path: str | os.PathLike, progress: Callable[[int], None] | None = None,
                      chunk_bytes: int | None = None) -> Iterator[tuple[int, str, int, np.ndarray]]:
    """Stream ``(record index, header, header line, ids)`` pieces of a FASTA file in file order.

    Each record yields an empty piece at its header, then its bases (uint8 ids) in pieces of up
    to ``chunk_bytes`` (default :data:`CHUNK_BYTES`); ``header`` is the header line without ``>``
    (the record's name is its first word, :func:`record_name`). ``progress(n)`` is called with the
    bytes read from disk since the last call. Raises :class:`SequenceFileError` for a file with
    no header (empty), sequence before the first header, a record without sequence or an
    unreadable file, and :class:`~mergedna.vocab.InvalidSequenceError` (file, record, position
    in the record, line) for a character outside the vocabulary.
    """
    path, chunk_bytes = str(path), chunk_bytes or CHUNK_BYTES
    index, name, rec_len, rec_line = -1, None, 0, 0
    line0, carry, eof, seen = 0, b"", False, 0
    with read_errors(path), open_binary(path) as fh:
        while not eof:
            chunk = fh.read(chunk_bytes)
            if progress is not None:
                pos = fh.raw_position()
                progress(pos - seen)
                seen = pos
            eof = not chunk
            buf = carry + chunk
            cut = len(buf) if eof else buf.rfind(b"\n") + 1  # process whole lines only
            carry = buf[cut:]
            i = 0
            while i < cut:
                if buf[i] == 0x3E:  # '>' at a line start: a header
                    nl = buf.find(b"\n", i, cut)
                    nl = cut if nl < 0 else nl
                    if name is not None and rec_len == 0:
                        raise SequenceFileError("record has no sequence", file=path, record=name, line=rec_line)
                    header = buf[i + 1 : nl].decode("utf-8", "replace").strip()
                    index, name, rec_len = index + 1, record_name(header), 0
                    rec_line = _line_of(buf, line0, i)
                    yield index, header, rec_line, np.zeros(0, np.uint8)
                    i = nl + 1
                    continue
                h = buf.find(b"\n>", i, cut)
                j = cut if h < 0 else h + 1
                seg = buf[i:j]
                seq = seg.translate(None, _WHITESPACE)
                if seq and name is None:
                    line = _line_of(buf, line0, i + len(seg) - len(seg.lstrip()))
                    raise SequenceFileError("not FASTA: sequence before the first '>' header", file=path, line=line)
                try:
                    ids = encode_bytes(seq, record=name, file=path, offset=rec_len)
                except InvalidSequenceError as err:
                    raw = np.frombuffer(seg, dtype=np.uint8)
                    kept = np.flatnonzero(~np.isin(raw, _WS_IDS))
                    err.line = _line_of(buf, line0, i + int(kept[err.position - rec_len - 1]))
                    err.args = (f"{err.args[0]}, line {err.line}",)
                    raise
                if ids.size:
                    yield index, header, rec_line, ids
                    rec_len += ids.size
                i = j
            line0 += buf.count(b"\n", 0, cut)
    if name is None:  # nothing but blank lines (anything else raised above)
        raise SequenceFileError("empty FASTA file: no '>' record", file=path)
    if rec_len == 0:
        raise SequenceFileError("record has no sequence", file=path, record=name, line=rec_line)


def record_name(header: str) -> str:
    """A FASTA record's name: its header up to the first blank."""
    words = header.split()
    return words[0] if words else ""


def iter_fasta_records(path: str | os.PathLike, progress: Callable[[int], None] | None = None
                       ) -> Iterator[tuple[str, int, np.ndarray]]:
    """Yield ``(header, header line, ids)`` per record of a FASTA file (errors as
    :func:`iter_fasta_pieces`)."""
    current, record, parts = -1, None, []
    for index, header, line, ids in iter_fasta_pieces(path, progress):
        if index != current:
            if current >= 0:
                yield (*record, np.concatenate(parts))
            current, record, parts = index, (header, line), []
        parts.append(ids)
    if current >= 0:
        yield (*record, np.concatenate(parts))


def iter_fasta(path: str | os.PathLike, progress: Callable[[int], None] | None = None
               ) -> Iterator[tuple[str, np.ndarray]]:
    """Yield ``(name, ids)`` per record of a FASTA file (errors as :func:`iter_fasta_pieces`)."""
    for header, _, ids in iter_fasta_records(path, progress):
        yield record_name(header), ids


# ---- coordinates ---------------------------------------------------------------------------------


def parse_region(text: str) -> tuple[str, int | None, int | None]:
    """``name`` or ``name:start-end`` (1-based inclusive, commas allowed, samtools convention) as
    ``(name, 0-based start, end)``, or ``(name, None, None)`` for a bare name."""
    m = _REGION.fullmatch(text)
    if m is None:
        if not text:
            raise ValueError("empty region; expected NAME or NAME:START-END (1-based, inclusive)")
        return text, None, None
    start, end = int(m["start"].replace(",", "")), int(m["end"].replace(",", ""))
    if not 1 <= start <= end:
        raise ValueError(f"bad region {text!r}: need 1 <= start <= end (1-based, inclusive)")
    return m["name"], start - 1, end


def union_intervals(intervals: Iterable[tuple[int, int]]) -> list[tuple[int, int]]:
    """Sorted, disjoint half-open intervals covering ``intervals`` (touching ones joined, empty ones
    dropped)."""
    out: list[tuple[int, int]] = []
    for a, b in sorted((int(a), int(b)) for a, b in intervals if b > a):
        if out and a <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], b))
        else:
            out.append((a, b))
    return out


def chunk_layout(lengths, chunk_length: int, overlap: int) -> tuple[np.ndarray, np.ndarray]:
    """Windows of ``chunk_length`` bases (stride ``chunk_length - overlap``, the last aligned to
    the sequence end) over sequences of ``lengths`` (n,): ``(rows, starts)``, each (M,), the
    windows of one sequence consecutive and in order. A sequence no longer than a window is one
    window at 0."""
    if not 0 <= overlap < chunk_length:
        raise ValueError(f"chunk overlap must be in [0, chunk length), got {overlap} for {chunk_length}")
    lengths = np.asarray(lengths, dtype=np.int64)
    stride = chunk_length - overlap
    excess = np.maximum(lengths - chunk_length, 0)
    n_chunks = 1 + -(-excess // stride)  # ceil(excess / stride) windows after the first
    rows = np.repeat(np.arange(len(lengths)), n_chunks)  # (M,) sequence of each window
    rank = np.arange(len(rows)) - np.repeat(np.cumsum(n_chunks) - n_chunks, n_chunks)  # window's rank in its row
    return rows, np.minimum(rank * stride, excess[rows])


def chunk_starts(length: int, chunk_length: int, overlap: int) -> np.ndarray:
    """Window starts over one sequence of ``length`` bases (see :func:`chunk_layout`)."""
    return chunk_layout([length], chunk_length, overlap)[1]


# ---- batches -------------------------------------------------------------------------------------


def pad_batch(arrays: list, pad_to_multiple_of: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad id arrays into ``ids`` (B, N) int64 (``PAD`` after each sequence) and ``mask``
    (B, N) bool (True on real bases); N is the longest, rounded up to ``pad_to_multiple_of``."""
    lengths = torch.tensor([len(a) for a in arrays], dtype=torch.long)
    width = int(lengths.max()) if len(arrays) else 0
    if pad_to_multiple_of:
        width = -(-width // pad_to_multiple_of) * pad_to_multiple_of
    ids = torch.full((len(arrays), width), PAD, dtype=torch.long)  # (B, N)
    for b, a in enumerate(arrays):
        ids[b, : len(a)] = torch.as_tensor(np.asarray(a, dtype=np.int64))
    return ids, torch.arange(width)[None, :] < lengths[:, None]


# ---- atomic writing ------------------------------------------------------------------------------


def _make_parent(path: Path) -> None:
    for parent in (path.parent, *path.parent.parents):  # a file in the way: say so, not "File exists"
        if parent.exists():
            if not parent.is_dir():
                raise NotADirectoryError(errno.ENOTDIR, "a file stands where a folder is needed", str(parent))
            break
    path.parent.mkdir(parents=True, exist_ok=True)


def _temp_sibling(path: Path) -> Path:
    return path.with_name(f".{path.name}.tmp-{os.getpid()}-{secrets.token_hex(4)}")


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary sibling path to write ``path`` through; on success it is renamed onto
    ``path``, on any failure deleted. Whatever creates the file there (``open``, numpy, pyarrow)
    creates it with the umask's mode."""
    path = Path(path)
    _make_parent(path)
    tmp = _temp_sibling(path)
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary sibling and a rename."""
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def write_json_atomic(path: str | os.PathLike, obj) -> None:
    """Write ``obj`` as indented JSON to ``path`` atomically."""
    write_text_atomic(path, json.dumps(obj, indent=2))


def atomic_write_dir(target: str | os.PathLike, write_fn: Callable[[Path], None]) -> Path:
    """Call ``write_fn(tmp_dir)`` on a fresh temporary sibling folder, then move it onto
    ``target`` (replacing an existing one). A crash leaves the old ``target`` or the new one,
    plus at most a temporary that :func:`remove_stale_temps` deletes later."""
    target = Path(target)
    _make_parent(target)
    tmp = _temp_sibling(target)
    tmp.mkdir()
    old = None
    try:
        write_fn(tmp)
        if target.exists():
            old = _temp_sibling(target)
            os.replace(target, old)
        os.replace(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        if old is not None and not target.exists():
            os.replace(old, target)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
    return target


def current_umask() -> int:
    """The process umask (read from /proc where it can be, without changing it)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def follow_umask(path: str | os.PathLike) -> None:
    """Give a file written by a library that picks its own mode (safetensors: 0600) the mode
    ``open`` would have given it: 0666 minus the umask."""
    os.chmod(path, 0o666 & ~current_umask())


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # exists, but another user's
        return True
    return True


def remove_stale_temps(folder: str | os.PathLike) -> list[Path]:
    """Delete the temporaries (:func:`atomic_path`, :func:`atomic_write_dir`) in ``folder`` whose
    writing process no longer runs on this machine; return what was removed."""
    folder = Path(folder)
    removed = []
    if not folder.is_dir():
        return removed
    for entry in folder.iterdir():
        m = _TEMP.match(entry.name)
        if m and not _alive(int(m["pid"])):
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry, ignore_errors=True)
            else:
                entry.unlink(missing_ok=True)
            removed.append(entry)
    return removed
