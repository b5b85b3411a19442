"""Variants from a VCF and the reference bases around them, for zero-shot variant scoring.

:func:`read_vcf` reads a VCF (plain, gzip or bgzip, sniffed from the magic bytes) into one
:class:`Variant` per ALT allele: multi-allelic records are split, and INFO fields declared
``Number=A`` (one value per ALT) or ``Number=R`` (REF, then one per ALT) keep only the values
of that allele. Only single-nucleotide variants (REF and ALT one of ``ACGT``) are kept; every
other allele is counted by kind in :attr:`VariantSet.skipped` (``indel``, ``mnv`` for
same-length multi-base substitutions, ``symbolic`` for ``<DEL>``, breakends and ``*``,
``no_alt`` for ``ALT=.``, ``non_acgt`` for an ``N`` or IUPAC base).

:class:`RegionReference` holds the FASTA records a set of chromosomes needs and maps a
chromosome position to a record and an offset in it. A record named like a samtools region,
``chrom:start-end`` (1-based, inclusive), holds that span of ``chrom``; any other record
holds its chromosome from position 1. A record whose name is the VCF's CHROM exactly is
always taken as the whole chromosome. Names match with or without a ``chr`` prefix.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .fasta import iter_fasta, open_text

BASES = "ACGT"
_INFO_HEADER = re.compile(r"^##INFO=<ID=([^,>]+),Number=([^,>]+)")
_REGION_NAME = re.compile(r"^(?P<chrom>.+):(?P<start>[\d,]+)-(?P<end>[\d,]+)$")


@dataclass
class Variant:
    """One SNV allele. ``pos`` is 1-based as in the VCF; ``line`` the 1-based line of its record."""

    chrom: str
    pos: int
    id: str
    ref: str
    alt: str
    info: dict[str, str]
    line: int

    @property
    def where(self) -> str:
        name = f" ({self.id})" if self.id not in (".", "") else ""
        return f"{self.chrom}:{self.pos}{name}"


@dataclass
class VariantSet:
    """The SNVs of a VCF (one per ALT allele, file order), the INFO keys in column order, the
    skipped alleles counted by kind, and the number of data records read."""

    path: str
    variants: list[Variant]
    info_keys: list[str]
    skipped: Counter = field(default_factory=Counter)
    records: int = 0


def _allele_kind(ref: str, alt: str) -> str:
    """``snv`` or the reason an allele is skipped."""
    if alt in (".", ""):
        return "no_alt"
    if alt.startswith("<") or "[" in alt or "]" in alt or alt == "*":
        return "symbolic"
    if len(ref) != len(alt):
        return "indel"
    if len(ref) > 1:
        return "mnv"
    if ref not in BASES or alt not in BASES:
        return "non_acgt"
    return "snv"


def _parse_info(text: str) -> dict[str, str]:
    """``K=V;FLAG`` -> {K: V, FLAG: '1'}; ``.`` -> {}."""
    if text in (".", ""):
        return {}
    out = {}
    for item in text.split(";"):
        if item:
            key, _, value = item.partition("=")
            out[key] = value if _ else "1"
    return out


def _allele_info(info: dict[str, str], numbers: dict[str, str], index: int, n_alts: int) -> dict[str, str]:
    """INFO of ALT number ``index`` (0-based): per-allele fields reduced to that allele's values."""
    if n_alts == 1:
        return info
    out = {}
    for key, value in info.items():
        values = value.split(",")
        if numbers.get(key) == "A" and len(values) == n_alts:
            value = values[index]
        elif numbers.get(key) == "R" and len(values) == n_alts + 1:
            value = f"{values[0]},{values[index + 1]}"
        out[key] = value
    return out


def read_vcf(path: str | Path) -> VariantSet:
    """The SNV alleles of a VCF (module docstring). A malformed record is a ``ValueError`` naming
    the file and line."""
    path = Path(path)
    numbers: dict[str, str] = {}
    declared: list[str] = []
    seen_keys: dict[str, None] = {}
    variants: list[Variant] = []
    skipped: Counter = Counter()
    records, header_seen = 0, False
    with open_text(path) as fh:
        for number, line in enumerate(fh, 1):
            line = line.rstrip("\r\n")
            if line.startswith("##"):
                m = _INFO_HEADER.match(line)
                if m:
                    numbers[m.group(1)] = m.group(2)
                    declared.append(m.group(1))
                continue
            if line.startswith("#"):
                header_seen = True
                continue
            if not line.strip():
                continue
            if not header_seen:
                raise ValueError(f"{path}, line {number}: not a VCF: data before the '#CHROM' header line")
            f = line.split("\t")
            if len(f) < 8:
                raise ValueError(f"{path}, line {number}: a VCF record needs 8 tab-separated columns, "
                                 f"found {len(f)}")
            chrom, pos_text, vid, ref, alts = f[0], f[1], f[2], f[3].upper(), f[4].upper()
            try:
                pos = int(pos_text)
            except ValueError:
                pos = 0
            if pos < 1:
                raise ValueError(f"{path}, line {number}: POS {pos_text!r} of {chrom} is not a positive integer")
            records += 1
            info = _parse_info(f[7])
            for key in info:
                seen_keys.setdefault(key)
            alt_list = alts.split(",")
            for index, alt in enumerate(alt_list):
                kind = _allele_kind(ref, alt)
                if kind != "snv":
                    skipped[kind] += 1
                    continue
                variants.append(Variant(chrom, pos, vid, ref, alt,
                                        _allele_info(info, numbers, index, len(alt_list)), number))
    if not header_seen:
        raise ValueError(f"{path}: not a VCF: no '#CHROM' header line")
    info_keys = [k for k in declared if k in seen_keys] + [k for k in seen_keys if k not in numbers]
    return VariantSet(str(path), variants, info_keys, skipped, records)


def _norm(name: str) -> str:
    return name[3:] if name.lower().startswith("chr") else name


@dataclass
class _Span:
    record: str
    start: int  # 0-based chromosome coordinate of the record's first base
    end: int


class RegionReference:
    """The FASTA records that hold ``chroms`` (module docstring for how names map), loaded once.

    ``ids[record]`` is the encoded record. :meth:`locate` maps a chromosome position to
    ``(record, offset)``; :meth:`describe` says what the FASTA holds of a chromosome.
    """

    def __init__(self, path: str | Path, chroms):
        self.path = str(path)
        wanted = {_norm(c) for c in chroms}
        exact = set(chroms)
        self.ids: dict[str, np.ndarray] = {}
        self.spans: dict[str, list[_Span]] = {}
        self.names: list[str] = []
        for name, ids in iter_fasta(path):
            self.names.append(name)
            m = _REGION_NAME.match(name)
            if name in exact or m is None:
                chrom, start = name, 0
            else:
                chrom = m.group("chrom")
                start, end = int(m.group("start").replace(",", "")), int(m.group("end").replace(",", ""))
                if end - start + 1 != len(ids):
                    raise ValueError(f"{path}: record {name!r} is named as the region {chrom}:{start}-{end} "
                                     f"({end - start + 1} bases) but holds {len(ids)} bases")
                start -= 1
            if _norm(chrom) not in wanted:
                continue
            self.ids[name] = ids
            self.spans.setdefault(_norm(chrom), []).append(_Span(name, start, start + len(ids)))

    def locate(self, chrom: str, pos: int) -> tuple[str, int] | None:
        """``(record, 0-based offset)`` holding 1-based ``pos`` of ``chrom``; with overlapping
        records, the one in which the position lies farthest from an end. None if none holds it."""
        best, best_margin = None, -1
        for span in self.spans.get(_norm(chrom), []):
            if span.start < pos <= span.end:
                margin = min(pos - 1 - span.start, span.end - pos)
                if margin > best_margin:
                    best, best_margin = (span.record, pos - 1 - span.start), margin
        return best

    def describe(self, chrom: str) -> str:
        """What the FASTA holds of ``chrom``, for error messages."""
        spans = self.spans.get(_norm(chrom))
        if not spans:
            shown = ", ".join(repr(n) for n in self.names[:8]) + (", ..." if len(self.names) > 8 else "")
            return f"no record of {chrom} (records: {shown or 'none'})"
        return "records " + ", ".join(f"{s.record!r} = {chrom}:{s.start + 1}-{s.end}" for s in spans)
