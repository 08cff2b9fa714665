"""The model's ordered gene vocabulary: gene symbols and, when known, Ensembl gene ids."""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any, overload

import numpy as np

_FORMAT = "storm_sc.GeneVocabulary"
_FORMAT_VERSION = 1
_ENSEMBL = re.compile(r"^ENS[A-Z]*G\d{6,}(\.\d+)?$", re.IGNORECASE)
_SPECIES = re.compile(r"^ENS([A-Z]*)G\d", re.IGNORECASE)


def is_ensembl(name: Any) -> bool:
    """Whether ``name`` looks like an Ensembl gene id (``ENSG00000141510``, ``ENSMUSG...``, with or without version)."""
    return isinstance(name, str) and _ENSEMBL.match(name) is not None


def ensembl_key(name: str) -> str:
    """Ensembl id without its version suffix, upper case: ``ENSG00000141510.17`` -> ``ENSG00000141510``."""
    return name.split(".", 1)[0].upper()


def ensembl_species(name: str) -> str | None:
    """The species code of an Ensembl gene id: ``""`` for human (``ENSG``), ``"MUS"`` for mouse (``ENSMUSG``), ...

    ``None`` when ``name`` is not an Ensembl gene id.
    """
    found = _SPECIES.match(name) if is_ensembl(name) else None
    return found.group(1).upper() if found else None


def symbol_key(name: str) -> str:
    """Case-insensitive key of a gene symbol (``Gfap``, ``GFAP`` and ``gfap`` are one gene)."""
    return name.strip().casefold()


class GeneVocabulary:
    """Ordered gene symbols (and optional Ensembl ids) that a model's expression inputs are indexed by.

    Stored with the model weights (:meth:`to_dict` / :meth:`from_dict`) so that any dataset can be aligned to the
    genes the model was trained on with :func:`storm_sc.pp.align_genes`. Symbols are matched case-insensitively.

    Parameters
    ----------
    symbols
        Gene symbols, in model order; unique after case-folding.
    ensembl_ids
        Ensembl gene ids in the same order (``None`` entries where unknown), or ``None``. An entry may also be a
        sequence of ids: one gene under one symbol in several species (``GFAP``: ``ENSG00000131095`` and the mouse
        ``ENSMUSG00000020932``), so that tables named by either species' ids align to it.

    Examples
    --------
    >>> import storm_sc as st
    >>> vocab = st.pp.GeneVocabulary.from_genes(["GFAP", "Snap25", "MBP"])
    >>> len(vocab), vocab.index("snap25")
    (3, 1)
    """

    def __init__(self, symbols: Sequence[str], ensembl_ids: Sequence[str | Sequence[str] | None] | None = None) -> None:
        symbols = list(symbols)
        if not symbols:
            raise ValueError("A gene vocabulary needs at least one gene symbol.")
        bad = [s for s in symbols if not isinstance(s, str) or not s.strip()]
        if bad:
            raise ValueError(f"Gene symbols must be non-empty strings; got e.g. {bad[:3]!r}.")
        self._symbols: tuple[str, ...] = tuple(s.strip() for s in symbols)
        self._by_symbol = _unique_index([symbol_key(s) for s in self._symbols], self._symbols, what="symbols")

        self._ensembl: tuple[str | None, ...] | None = None
        self._all_ensembl: tuple[tuple[str, ...], ...] | None = None
        self._by_ensembl: dict[str, int] = {}
        if ensembl_ids is not None:
            ids = [_id_tuple(e) for e in ensembl_ids]
            if len(ids) != len(self._symbols):
                raise ValueError(
                    f"`ensembl_ids` has {len(ids)} entries but there are {len(self._symbols)} symbols; give one id "
                    "(or None, or a list of ids) per symbol."
                )
            wrong = [e for entry in ids for e in entry if not is_ensembl(e)]
            if wrong:
                raise ValueError(f"`ensembl_ids` must be Ensembl gene ids (e.g. 'ENSG00000141510'); got {wrong[:3]!r}.")
            known = [(ensembl_key(e), i, e) for i, entry in enumerate(ids) for e in entry]
            by_known = _unique_index([k for k, _, _ in known], [e for _, _, e in known], what="Ensembl ids")
            self._by_ensembl = {k: known[j][1] for k, j in by_known.items()}
            self._all_ensembl = tuple(ids)
            self._ensembl = tuple(entry[0] if entry else None for entry in ids)
        # A "symbol" that is an Ensembl id (var_names of a table read with gene ids) is matched as one.
        for i, symbol in enumerate(self._symbols):
            if is_ensembl(symbol) and (self._ensembl is None or self._ensembl[i] is None):
                self._by_ensembl.setdefault(ensembl_key(symbol), i)

    @classmethod
    def from_genes(
        cls, symbols: Iterable[str], *, ensembl_ids: Iterable[str | Sequence[str] | None] | None = None
    ) -> GeneVocabulary:
        """Build a vocabulary from gene symbols in model order.

        Parameters
        ----------
        symbols
            Gene symbols (e.g. ``adata.var_names`` of the training data).
        ensembl_ids
            Matching Ensembl gene ids (per gene: one id, a list of ids, or ``None``), or ``None``.

        Returns
        -------
        The vocabulary.

        Examples
        --------
        >>> import storm_sc as st
        >>> st.pp.GeneVocabulary.from_genes(["GFAP", "MBP"], ensembl_ids=["ENSG00000131095", None])
        GeneVocabulary(2 genes: GFAP, MBP; with Ensembl ids)
        """
        return cls(list(symbols), None if ensembl_ids is None else list(ensembl_ids))

    @property
    def symbols(self) -> tuple[str, ...]:
        """Gene symbols in model order."""
        return self._symbols

    @property
    def ensembl_ids(self) -> tuple[str | None, ...] | None:
        """Ensembl gene ids in model order, or ``None``.

        ``None`` entries where unknown; the first id of entries with several (see :attr:`all_ensembl_ids`).
        """
        return self._ensembl

    @property
    def all_ensembl_ids(self) -> tuple[tuple[str, ...], ...] | None:
        """Every Ensembl id of each entry in model order (empty tuples where unknown), or ``None``."""
        return self._all_ensembl

    @property
    def symbol_index(self) -> Mapping[str, int]:
        """Case-folded symbol -> position."""
        return self._by_symbol

    @property
    def ensembl_index(self) -> Mapping[str, int]:
        """Version-less upper-case Ensembl id -> position (empty without ids)."""
        return self._by_ensembl

    def __len__(self) -> int:
        return len(self._symbols)

    def __iter__(self) -> Iterator[str]:
        return iter(self._symbols)

    def __contains__(self, gene: object) -> bool:
        return isinstance(gene, str) and self._lookup(gene) is not None

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, GeneVocabulary):
            return NotImplemented
        return self._symbols == other._symbols and self._all_ensembl == other._all_ensembl

    def __hash__(self) -> int:
        return hash((self._symbols, self._all_ensembl))

    def __repr__(self) -> str:
        head = ", ".join(self._symbols[:5]) + (", ..." if len(self) > 5 else "")
        ids = "; with Ensembl ids" if self._ensembl is not None else ""
        return f"GeneVocabulary({len(self)} genes: {head}{ids})"

    def _lookup(self, gene: str) -> int | None:
        if is_ensembl(gene) and ensembl_key(gene) in self._by_ensembl:
            return self._by_ensembl[ensembl_key(gene)]
        return self._by_symbol.get(symbol_key(gene))

    @overload
    def index(self, genes: str) -> int: ...
    @overload
    def index(self, genes: Sequence[str]) -> np.ndarray: ...
    def index(self, genes: str | Sequence[str]) -> int | np.ndarray:
        """Position(s) of genes given by symbol (any case) or Ensembl id.

        Parameters
        ----------
        genes
            One gene or a sequence of genes.

        Returns
        -------
        An int for one gene, an int64 array for several.

        Raises
        ------
        KeyError
            When a gene is not in the vocabulary.

        Examples
        --------
        >>> import storm_sc as st
        >>> st.pp.GeneVocabulary.from_genes(["GFAP", "MBP"]).index(["mbp", "GFAP"])
        array([1, 0])
        """
        if isinstance(genes, str):
            pos = self._lookup(genes)
            if pos is None:
                raise KeyError(f"Gene {genes!r} is not in the vocabulary ({self!r}).")
            return pos
        out = [self._lookup(g) if isinstance(g, str) else None for g in genes]
        missing = [g for g, p in zip(genes, out, strict=True) if p is None]
        if missing:
            raise KeyError(f"{len(missing)} genes are not in the vocabulary, e.g. {missing[:5]!r}.")
        return np.asarray(out, dtype=np.int64)

    def to_dict(self) -> dict[str, Any]:
        """Describe the vocabulary as JSON-serialisable data, to be stored with the model weights.

        Returns
        -------
        ``{"format", "version", "symbols", "ensembl_ids"}``, and ``"more_ensembl_ids"`` (position -> further ids)
        for entries with several ids.

        Examples
        --------
        >>> import storm_sc as st
        >>> v = st.pp.GeneVocabulary.from_genes(["GFAP", "MBP"])
        >>> st.pp.GeneVocabulary.from_dict(v.to_dict()) == v
        True
        """
        out = {
            "format": _FORMAT,
            "version": _FORMAT_VERSION,
            "symbols": list(self._symbols),
            "ensembl_ids": None if self._ensembl is None else list(self._ensembl),
        }
        # Kept apart from "ensembl_ids" (one id or None per gene) so that the common case stays one flat list.
        more = {str(i): list(entry[1:]) for i, entry in enumerate(self._all_ensembl or ()) if len(entry) > 1}
        if more:
            out["more_ensembl_ids"] = more
        return out

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> GeneVocabulary:
        """Rebuild a vocabulary written by :meth:`to_dict`.

        Parameters
        ----------
        d
            The stored description.

        Returns
        -------
        The vocabulary.

        Examples
        --------
        >>> import storm_sc as st
        >>> st.pp.GeneVocabulary.from_dict({"symbols": ["GFAP"], "ensembl_ids": None})
        GeneVocabulary(1 genes: GFAP)
        """
        if not isinstance(d, Mapping) or "symbols" not in d:
            raise ValueError("Not a stored gene vocabulary: expected a mapping with a 'symbols' list (from `to_dict`).")
        if d.get("format", _FORMAT) != _FORMAT:
            raise ValueError(f"Not a stored gene vocabulary: format is {d.get('format')!r}, expected {_FORMAT!r}.")
        if int(d.get("version", _FORMAT_VERSION)) > _FORMAT_VERSION:
            raise ValueError(
                f"This gene vocabulary was written by a newer storm_sc (format version {d['version']}); upgrade storm_sc."
            )
        ids = d.get("ensembl_ids")
        more = d.get("more_ensembl_ids") or {}
        if more:
            if ids is None:
                raise ValueError("Stored gene vocabulary has 'more_ensembl_ids' but no 'ensembl_ids'.")
            ids = [[e, *more.get(str(i), [])] if e is not None else None for i, e in enumerate(ids)]
        return cls(list(d["symbols"]), ids)


def _id_tuple(entry: Any) -> tuple[str, ...]:
    """One vocabulary entry's Ensembl ids: from None, one id, or a sequence of ids (missing values dropped)."""
    if isinstance(entry, str) or _missing(entry):
        return () if _missing(entry) else (entry.strip(),)
    if isinstance(entry, Iterable):
        return tuple(str(e).strip() for e in entry if not _missing(e))
    return (str(entry).strip(),)


def _missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and np.isnan(value)) or (isinstance(value, str) and not value)


def _unique_index(keys: Sequence[str], names: Sequence[str | None], *, what: str) -> dict[str, int]:
    index: dict[str, int] = {}
    clashes: list[str] = []
    for i, key in enumerate(keys):
        if key in index:
            clashes.append(f"{names[index[key]]!r} / {names[i]!r}")
        else:
            index[key] = i
    if clashes:
        raise ValueError(
            f"Gene vocabulary {what} must be unique (symbols compared case-insensitively); duplicated: "
            f"{', '.join(clashes[:5])}{' ...' if len(clashes) > 5 else ''}."
        )
    return index
