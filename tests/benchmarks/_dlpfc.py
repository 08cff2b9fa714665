"""A data folder holding several DLPFC sections, made of links to the one section in the shared data."""

from __future__ import annotations

from pathlib import Path

from tests._paths import real_data


def dlpfc_sections(root: Path, samples: tuple[str, ...]) -> Path:
    """``root`` with ``dlpfc_<sample>/`` for each sample, every file a link to 151675's (nothing is copied)."""
    source = real_data("dlpfc_151675")
    for sample in samples:
        for f in source.rglob("*"):
            if f.is_file():
                link = root / f"dlpfc_{sample}" / f.relative_to(source)
                link.parent.mkdir(parents=True, exist_ok=True)
                link.symlink_to(f)
    return root
