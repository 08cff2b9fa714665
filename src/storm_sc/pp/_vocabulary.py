"""The model's ordered gene vocabulary: gene symbols and, when known, Ensembl gene ids."""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any, overload

import numpy as np

_FORMAT = "storm_sc.GeneVocabulary"
_FORMAT_VERSION = 1
_ENSEMBL = re.compile(r"^ENS[A-Z]*G\d{6,}(\.\d+)?$", re.IGNORECASE)


def is_ensembl(name: Any) -> bool:
    """Whether ``name`` looks like an Ensembl gene id (``ENSG00000141510``, ``ENSMUSG...``, with or without version)."""
    return isinstance(name, str) and _ENSEMBL.match(name) is not None


def ensembl_key(name: str) -> str:
    """Ensembl id without its version suffix, upper case: ``ENSG00000141510.17`` -> ``ENSG00000141510``."""
    return name.split(".", 1)[0].upper()


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
        Ensembl gene ids in the same order (``None`` entries where unknown), or ``None``.

    Examples
    --------
    >>> import storm_sc as st
    >>> vocab = st.pp.GeneVocabulary.from_genes(["GFAP", "Snap25", "MBP"])
    >>> len(vocab), vocab.index("snap25")
    (3, 1)
    """

    def __init__(self, symbols: Sequence[str], ensembl_ids: Sequence[str | None] | None = None) -> None:
        symbols = list(symbols)
        if not symbols:
            raise ValueError("A gene vocabulary needs at least one gene symbol.")
        bad = [s for s in symbols if not isinstance(s, str) or not s.strip()]
        if bad:
            raise ValueError(f"Gene symbols must be non-empty strings; got e.g. {bad[:3]!r}.")
        self._symbols: tuple[str, ...] = tuple(s.strip() for s in symbols)
        self._by_symbol = _unique_index([symbol_key(s) for s in self._symbols], self._symbols, what="symbols")

        self._ensembl: tuple[str | None, ...] | None = None
        self._by_ensembl: dict[str, int] = {}
        if ensembl_ids is not None:
            ids = [None if _missing(e) else str(e).strip() for e in ensembl_ids]
            if len(ids) != len(self._symbols):
                raise ValueError(
                    f"`ensembl_ids` has {len(ids)} entries but there are {len(self._symbols)} symbols; give one id "
                    "(or None) per symbol."
                )
            wrong = [e for e in ids if e is not None and not is_ensembl(e)]
            if wrong:
                raise ValueError(f"`ensembl_ids` must be Ensembl gene ids (e.g. 'ENSG00000141510'); got {wrong[:3]!r}.")
            known = [(ensembl_key(e), i) for i, e in enumerate(ids) if e is not None]
            by_known = _unique_index([k for k, _ in known], [ids[i] for _, i in known], what="Ensembl ids")
            self._by_ensembl = {k: known[j][1] for k, j in by_known.items()}
            self._ensembl = tuple(ids)
        # A "symbol" that is an Ensembl id (var_names of a table read with gene ids) is matched as one.
        for i, symbol in enumerate(self._symbols):
            if is_ensembl(symbol) and (self._ensembl is None or self._ensembl[i] is None):
                self._by_ensembl.setdefault(ensembl_key(symbol), i)

    @classmethod
    def from_genes(cls, symbols: Iterable[str], *, ensembl_ids: Iterable[str | None] | None = None) -> GeneVocabulary:
        """Build a vocabulary from gene symbols in model order.

        Parameters
        ----------
        symbols
            Gene symbols (e.g. ``adata.var_names`` of the training data).
        ensembl_ids
            Matching Ensembl gene ids, or ``None``.

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
        """Ensembl gene ids in model order (``None`` entries where unknown), or ``None``."""
        return self._ensembl

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
        return self._symbols == other._symbols and self._ensembl == other._ensembl

    def __hash__(self) -> int:
        return hash((self._symbols, self._ensembl))

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
        ``{"format", "version", "symbols", "ensembl_ids"}``.

        Examples
        --------
        >>> import storm_sc as st
        >>> v = st.pp.GeneVocabulary.from_genes(["GFAP", "MBP"])
        >>> st.pp.GeneVocabulary.from_dict(v.to_dict()) == v
        True
        """
        return {
            "format": _FORMAT,
            "version": _FORMAT_VERSION,
            "symbols": list(self._symbols),
            "ensembl_ids": None if self._ensembl is None else list(self._ensembl),
        }

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
        return cls(list(d["symbols"]), d.get("ensembl_ids"))


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
