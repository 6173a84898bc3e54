"""Derived-copy detection over files (:mod:`osteo_pipeline.core.copies` does the matching).

Features are cached by content hash (``<cache>/<version>/<sha[:2]>/<sha>.npz``), and the links of
each matched set of contents are kept (``<cache>/<version>/matched.json``, the last few sets), so a
re-validation of a folder that gained files matches only the new files, against all of them.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import numpy as np

from osteo_pipeline.config import ValidationSettings
from osteo_pipeline.core import copies
from osteo_pipeline.core.preprocess import ImageDecodeError, load_gray
from osteo_pipeline.errors import OsteoError

log = logging.getLogger(__name__)
KEPT_SETS = 8  # matched sets remembered in matched.json


def copy_finder(validation: ValidationSettings) -> CopyFinder:
    """The finder the settings describe (cache folder: the setting, else ~/.cache/osteo/copies;
    ``none``: memory only)."""
    folder = validation.copies_cache_dir or Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "osteo" / "copies"
    return CopyFinder(validation.max_pixels, validation.copy_threshold, None if str(folder).lower() == "none" else Path(folder))


@dataclass(frozen=True)
class Content:
    """One distinct content: its hash, a file that holds it, and the file's (width, height)."""

    sha256: str
    path: Path
    size: tuple[int, int] | None  # None: not known (tells "resized" from "re-encoded" only)


@dataclass
class CopyLinks:
    """Verified links between contents (by sha256), and how the matching went."""

    links: list[dict[str, object]]  # source, copy (sha256), kind, score
    matched: int  # contents looked up this time (the rest came from the cache)
    seconds: float
    groups: dict[str, int] = field(default_factory=dict)  # sha256 -> group id


class CopyCheckError(OsteoError):
    """Derived copies could not be checked for, so nothing could be left out safely."""


class CopyFinder:
    """Finds derived copies among contents, with an optional on-disk cache (``None``: memory)."""

    def __init__(self, max_pixels: int, threshold: float, cache_dir: Path | None = None) -> None:
        self.max_pixels = max_pixels
        self.threshold = threshold
        self.folder = cache_dir / copies.VERSION if cache_dir else None
        self._features: dict[str, copies.Features] = {}
        self._picture = lru_cache(maxsize=512)(self._load_picture)

    def _load_picture(self, path: Path) -> np.ndarray:
        return copies.working_picture(load_gray(path, copies.WORK_SIDE * 2, self.max_pixels))[0]

    def features(self, content: Content) -> copies.Features:
        """The content's features: from memory, the cache, or computed from its file."""
        if content.sha256 in self._features:
            return self._features[content.sha256]
        stored = self.folder / content.sha256[:2] / f"{content.sha256}.npz" if self.folder else None
        found = None
        if stored is not None and stored.is_file():
            try:
                with np.load(stored) as arrays:
                    found = copies.Features.from_arrays(dict(arrays))
            except (OSError, ValueError, KeyError):
                found = None  # torn or foreign: compute again and overwrite
        if found is None:
            gray = load_gray(content.path, copies.WORK_SIDE * 2, self.max_pixels)
            found = copies.features(gray)
            if stored is not None:
                stored.parent.mkdir(parents=True, exist_ok=True)
                tmp = stored.with_suffix(f".{os.getpid()}.{threading.get_ident()}.tmp.npz")
                np.savez(tmp, **found.arrays())
                tmp.replace(stored)
        self._features[content.sha256] = found
        return found

    def _remembered(self, shas: set[str]) -> tuple[set[str], list[dict[str, object]]]:
        """The largest part of ``shas`` matched together before, and the links found among it."""
        best: set[str] = set()
        links: list[dict[str, object]] = []
        for entry in self._matched_sets():
            known = shas & set(entry["shas"])
            if len(known) > len(best):
                best, links = known, [link for link in entry["links"] if {link["source"], link["copy"]} <= known]
        return best, links

    def _matched_sets(self) -> list[dict]:
        path = self.folder / "matched.json" if self.folder else None
        if path is None or not path.is_file():
            return []
        try:
            return list(json.loads(path.read_text(encoding="utf-8")))
        except (OSError, ValueError):
            return []

    def _remember(self, shas: set[str], links: list[dict[str, object]]) -> None:
        if self.folder is None:
            return
        entries = [e for e in self._matched_sets() if set(e["shas"]) != shas][-(KEPT_SETS - 1) :]
        entries.append({"shas": sorted(shas), "links": links})
        self.folder.mkdir(parents=True, exist_ok=True)
        tmp = self.folder / f"matched.json.{os.getpid()}.{threading.get_ident()}.tmp"
        tmp.write_text(json.dumps(entries), encoding="utf-8")
        tmp.replace(self.folder / "matched.json")

    def find(self, contents: Sequence[Content]) -> CopyLinks:
        """Links among ``contents`` (one per distinct sha256). Contents whose file cannot be
        decoded at matching size are left out of matching (validation reports unreadable files)."""
        started = time.perf_counter()
        usable, prints = [], []
        for content, found in zip(contents, self._all_features_safe(contents)):
            if found is not None:
                usable.append(content)
                prints.append(found)
        shas = {c.sha256 for c in usable}
        known, links = self._remembered(shas)
        queried = [i for i, c in enumerate(usable) if c.sha256 not in known]
        if queried:
            found_links = copies.find_links(
                prints, lambda i: self._picture(usable[i].path), [c.size or (0, 0) for c in usable], queried=queried, threshold=self.threshold
            )
            links = links + [
                {"source": usable[link.source].sha256, "copy": usable[link.copy].sha256, "kind": link.kind, "score": link.score}
                for link in found_links
            ]
            self._remember(shas, links)
        index = {c.sha256: i for i, c in enumerate(usable)}
        groups = copies.copy_groups(len(usable), [(index[link["source"]], index[link["copy"]]) for link in links])
        seconds = time.perf_counter() - started
        log.info("derived copies: %d links among %d contents (%d matched now) in %.1f s", len(links), len(usable), len(queried), seconds)
        return CopyLinks(links, len(queried), seconds, {c.sha256: int(g) for c, g in zip(usable, groups)})

    def _all_features_safe(self, contents: Sequence[Content]) -> list[copies.Features | None]:
        def one(content: Content) -> copies.Features | None:
            try:
                return self.features(content)
            except (ImageDecodeError, OSError) as exc:
                log.warning("derived copies: %s left out (%s)", content.path, exc)
                return None

        with ThreadPoolExecutor(max_workers=min(8, (os.cpu_count() or 1) + 2)) as pool:
            return list(pool.map(one, contents))

    def derived_from(self, candidates: Sequence[Content], originals: Sequence[Content]) -> dict[str, dict[str, object]]:
        """For each candidate content that is a derived copy of one of ``originals``: the link
        (by the candidate's sha256). Every original's features must be found: an original that can
        be read neither from the cache nor from its file stops the check with
        :class:`CopyCheckError`, never a silent skip."""
        originals = [o for o in originals if o.sha256 not in {c.sha256 for c in candidates}]
        original_prints = self._all_features_safe(originals)
        missing = [o for o, p in zip(originals, original_prints) if p is None]
        if missing:
            where = f"the copies cache {self.folder}" if self.folder else "a copies cache (none is set)"
            raise CopyCheckError(
                f"cannot check for derived copies of {len(missing)} of {len(originals)} training images: they are neither in "
                f"{where} nor readable (first: {missing[0].path}); point the run at its data or its cache"
            )
        candidate_prints = self._all_features_safe(candidates)
        kept = [(c, p) for c, p in zip(candidates, candidate_prints) if p is not None]
        prints = [p for p in original_prints if p is not None] + [p for _, p in kept]
        everyone = list(originals) + [c for c, _ in kept]
        links = copies.find_links(
            prints, lambda i: self._picture(everyone[i].path), [c.size or (0, 0) for c in everyone], queried=range(len(originals), len(everyone)), threshold=self.threshold
        )
        found: dict[str, dict[str, object]] = {}
        for link in links:
            if (link.source < len(originals)) == (link.copy < len(originals)):
                continue  # two originals, or two candidates: not a leak
            candidate, original = (link.copy, link.source) if link.copy >= len(originals) else (link.source, link.copy)
            found[everyone[candidate].sha256] = {"original": everyone[original].sha256, "kind": link.kind, "score": link.score}
        return found
