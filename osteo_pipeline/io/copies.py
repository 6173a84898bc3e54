"""Derived-copy detection over files (:mod:`osteo_pipeline.core.copies` does the matching).

Features are cached by content hash (``<cache>/<version>/<sha[:2]>/<sha>.npz``), and the links of
each matched set of contents are kept (``<cache>/<version>/matched-<threshold>.json``, the last few
sets), so a re-validation of a folder that gained files matches only the new files, against all of
them. With the cache, matching holds neither every content's features (each is read back when the
search or a verification needs it) nor its keypoint index (faiss' inverted lists in a sparse,
memory-mapped file under the cache, removed after), so its memory does not grow with the number of
images. The cache only saves time and memory: when it cannot be read or written the finder says
so once and works in memory.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import lru_cache, partial
from pathlib import Path
from typing import Any

import numpy as np

from osteo_pipeline.config import ValidationSettings
from osteo_pipeline.core import copies, copy_features
from osteo_pipeline.core.copy_candidates import InvertedLists
from osteo_pipeline.core.preprocess import ImageDecodeError, load_gray
from osteo_pipeline.errors import OsteoError
from osteo_pipeline.io.cachedir import cache_folder
from osteo_pipeline.io.keypoint_index import lists_on_disk

log = logging.getLogger(__name__)
KEPT_SETS = 8  # matched sets remembered per threshold


def copy_finder(validation: ValidationSettings) -> CopyFinder:
    """The finder the settings describe (cache: ``validation.copies_cache_dir``)."""
    return CopyFinder(
        validation.max_pixels,
        validation.copy_threshold,
        cache_folder(validation.copies_cache_dir, "copies"),
    )


@dataclass(frozen=True)
class Content:
    """One distinct content: its hash, a file that holds it, and the file's (width, height)."""

    sha256: str
    path: Path
    size: tuple[int, int] | None  # None: not known (names "resized" or "re-encoded", and the
    # larger of two files is read as the original)
    name: str | None = None  # how messages name it (a manifest's ``row N``); default: its path

    @property
    def shown(self) -> str:
        return self.name or str(self.path)


@dataclass
class CopyLinks:
    """Verified links between contents (by sha256), and how the matching went."""

    links: list[dict[str, Any]]  # source, copy (sha256), kind, score
    matched: int  # contents looked up this time (the rest came from the cache)
    seconds: float
    groups: dict[str, int] = field(default_factory=dict)  # sha256 -> group id


class CopyCheckError(OsteoError):
    """Derived copies could not be checked for, so nothing could be left out safely."""


def _is_matched_set(entry: Any) -> bool:
    return (
        isinstance(entry, dict)
        and isinstance(entry.get("shas"), list)
        and isinstance(entry.get("links"), list)
        and all(
            isinstance(link, dict) and {"source", "copy", "kind", "score"} <= set(link)
            for link in entry["links"]
        )
    )


class CopyFinder:
    """Finds derived copies among contents, with an optional on-disk cache (``None``: memory)."""

    def __init__(self, max_pixels: int, threshold: float, cache_dir: Path | None = None) -> None:
        self.max_pixels = max_pixels
        self.threshold = threshold
        self.folder = cache_dir / copies.VERSION if cache_dir else None
        self._features: dict[str, copy_features.Features] = {}
        self._picture = lru_cache(maxsize=512)(self._load_picture)
        self._warned = False
        self._warn_lock = threading.Lock()

    def _cache_failed(self, what: str, exc: BaseException) -> None:
        with self._warn_lock:
            if self._warned:
                return
            self._warned = True
        log.warning(
            "derived copies: cannot %s the cache in %s (%s); working in memory",
            what,
            self.folder,
            exc,
        )

    def _load_picture(self, path: Path) -> np.ndarray:
        return copy_features.working_picture(
            load_gray(path, copy_features.WORK_SIDE * 2, self.max_pixels)
        )

    def _stored_file(self, sha256: str) -> Path:
        assert self.folder is not None
        return self.folder / sha256[:2] / f"{sha256}.npz"

    def _stored(self, sha256: str) -> copy_features.Features | None:
        if self.folder is None:
            return None
        try:
            with np.load(self._stored_file(sha256)) as arrays:
                return copy_features.Features.from_arrays(dict(arrays))
        except FileNotFoundError:
            return None
        except OSError as exc:  # a folder that cannot be searched or read
            self._cache_failed("read", exc)
            return None
        except Exception:  # noqa: BLE001 - a torn or foreign file (any of numpy's zip errors): compute again
            return None

    def _store(self, sha256: str, found: copy_features.Features) -> bool:
        """Keep ``found`` in the cache; whether it is there to read back."""
        if self.folder is None:
            return False
        stored = self._stored_file(sha256)
        try:
            stored.parent.mkdir(parents=True, exist_ok=True)
            tmp = stored.with_suffix(f".{os.getpid()}.{threading.get_ident()}.tmp.npz")
            np.savez(tmp, **found.arrays())
            tmp.replace(stored)
        except OSError as exc:
            self._cache_failed("write", exc)
            return False
        return True

    def features(self, content: Content) -> copy_features.Features:
        """The content's features: from the cache, from memory (where the cache could not keep
        them), or computed from its file (raises :class:`ImageDecodeError` or :class:`OSError`
        when the file cannot be read)."""
        found = self._features.get(content.sha256)
        if found is None:
            found = self._stored(content.sha256)
        if found is None:
            found = copy_features.features(
                load_gray(content.path, copy_features.WORK_SIDE * 2, self.max_pixels)
            )
            if not self._store(content.sha256, found):
                self._features[content.sha256] = found
        return found

    def descriptors(self, content: Content) -> tuple[np.ndarray, np.ndarray]:
        """The content's plain and mirrored descriptors (:meth:`features`, reading only those
        two arrays of a cached file)."""
        found = self._features.get(content.sha256)
        if found is None and self.folder is not None:
            try:
                with np.load(self._stored_file(content.sha256)) as arrays:
                    return arrays["descriptors"], arrays["mirrored_descriptors"]
            except Exception:  # noqa: BLE001 - unreadable or torn: features() says or computes
                pass
        if found is None:
            found = self.features(content)
        return found.descriptors, found.mirrored_descriptors

    def _readable(self, contents: Sequence[Content]) -> list[bool]:
        """Whether each content has features (computed and cached now where missing; a cached
        file is taken as it is, read when needed and computed again if torn); False, with a
        warning, where its file cannot be decoded."""

        def one(content: Content) -> bool:
            if self.folder is not None and self._stored_file(content.sha256).is_file():
                return True
            try:
                self.features(content)
            except (ImageDecodeError, OSError) as exc:
                log.warning("derived copies: %s left out of matching (%s)", content.shown, exc)
                return False
            return True

        with ThreadPoolExecutor(max_workers=min(8, (os.cpu_count() or 1) + 2)) as pool:
            return list(pool.map(one, contents))

    @contextmanager
    def _index_lists(self) -> Iterator[InvertedLists | None]:
        """Where the keypoint index keeps its keypoints while matching: a sparse file in a
        private folder under the cache, removed after; ``None`` (memory) without a cache."""
        scratch = None
        if self.folder is not None:
            try:
                self.folder.mkdir(parents=True, exist_ok=True)
                scratch = tempfile.TemporaryDirectory(prefix="index-", dir=self.folder)
            except OSError as exc:
                self._cache_failed("write", exc)
        if scratch is None:
            yield None
            return
        with scratch as folder:
            yield partial(lists_on_disk, Path(folder) / "lists")

    @property
    def _matched_file(self) -> Path | None:
        return self.folder / f"matched-{self.threshold:g}.json" if self.folder else None

    def _matched_sets(self) -> list[dict[str, Any]]:
        path = self._matched_file
        if path is None:
            return []
        try:
            entries = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return []
        except OSError as exc:
            self._cache_failed("read", exc)
            return []
        except ValueError:
            return []
        return [e for e in entries if _is_matched_set(e)] if isinstance(entries, list) else []

    def _remembered(self, shas: set[str]) -> tuple[set[str], list[dict[str, Any]]]:
        """The largest set matched before that lies wholly in ``shas``, and its links. Only such
        a set is safe to reuse: had files left since, a pair they crowded out of the candidates
        would never be looked at again."""
        best: set[str] = set()
        links: list[dict[str, Any]] = []
        for entry in self._matched_sets():
            known = set(entry["shas"])
            if known <= shas and len(known) > len(best):
                best, links = known, entry["links"]
        return best, links

    def _remember(self, shas: set[str], links: list[dict[str, Any]]) -> None:
        path = self._matched_file
        if path is None:
            return
        entries = [e for e in self._matched_sets() if set(e["shas"]) != shas][-(KEPT_SETS - 1) :]
        entries.append({"shas": sorted(shas), "links": links})
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(f"{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
            tmp.write_text(json.dumps(entries), encoding="utf-8")
            tmp.replace(path)
        except OSError as exc:
            self._cache_failed("write", exc)

    def find(self, contents: Sequence[Content]) -> CopyLinks:
        """Links among ``contents`` (one per distinct sha256). Contents whose file cannot be
        decoded at matching size are left out of matching, with a warning (validation reports
        unreadable files)."""
        started = time.perf_counter()
        usable = [c for c, readable in zip(contents, self._readable(contents)) if readable]
        shas = {c.sha256 for c in usable}
        known, links = self._remembered(shas)
        queried = [i for i, c in enumerate(usable) if c.sha256 not in known]
        if queried:
            prints = _Prints(self, usable)
            with self._index_lists() as lists:
                found_links = copies.find_links(
                    prints,
                    lambda i: self._picture(usable[i].path),
                    [c.size or (0, 0) for c in usable],
                    queried=queried,
                    threshold=self.threshold,
                    inverted_lists=lists,
                    descriptors=prints.descriptors,
                )
            links = links + [
                {
                    "source": usable[link.source].sha256,
                    "copy": usable[link.copy].sha256,
                    "kind": link.kind,
                    "score": link.score,
                }
                for link in found_links
            ]
            self._remember(shas, links)
        index = {c.sha256: i for i, c in enumerate(usable)}
        groups = copies.connected_groups(
            len(usable), [(index[link["source"]], index[link["copy"]]) for link in links]
        )
        seconds = time.perf_counter() - started
        log.info(
            "derived copies: %d links among %d contents (%d matched now) in %.1f s",
            len(links),
            len(usable),
            len(queried),
            seconds,
        )
        return CopyLinks(
            links, len(queried), seconds, {c.sha256: int(g) for c, g in zip(usable, groups)}
        )

    def derived_from(
        self, candidates: Sequence[Content], originals: Sequence[Content]
    ) -> dict[str, dict[str, Any]]:
        """For each candidate that is a derived copy of one of ``originals``: the link, by the
        candidate's sha256 (identical contents are the caller's to find). The originals' files
        must be readable (verification decodes them; features may come from the cache): when one
        is not, this raises :class:`CopyCheckError`, it never skips quietly."""
        by_sha = {o.sha256: o for o in originals}
        originals = list(by_sha.values())
        missing = [o for o, readable in zip(originals, self._readable(originals)) if not readable]
        if missing:
            raise CopyCheckError(
                f"cannot check for derived copies of {len(missing)} of {len(originals)} "
                f"training images: their files cannot be read (first: {missing[0].shown}); "
                "make the training data available where its split manifest says"
            )
        everyone = originals + [
            c for c, readable in zip(candidates, self._readable(candidates)) if readable
        ]
        try:
            prints = _Prints(self, everyone)
            with self._index_lists() as lists:
                links = copies.find_links(
                    prints,
                    lambda i: self._picture(everyone[i].path),
                    [c.size or (0, 0) for c in everyone],
                    queried=range(len(originals), len(everyone)),
                    sources=range(len(originals)),
                    threshold=self.threshold,
                    inverted_lists=lists,
                    descriptors=prints.descriptors,
                )
        except (ImageDecodeError, OSError) as exc:
            raise CopyCheckError(
                f"cannot check for derived copies of the training images: {exc}"
            ) from exc
        found: dict[str, dict[str, Any]] = {}
        for link in links:
            candidate, original = (
                (link.copy, link.source)
                if link.copy >= len(originals)
                else (link.source, link.copy)
            )
            found[everyone[candidate].sha256] = {
                "original": everyone[original].sha256,
                "kind": link.kind,
                "score": link.score,
            }
        return found


class _Prints(Sequence[copy_features.Features]):
    """The features of ``contents`` by position, read from the finder when the candidate search or
    a verification needs them (the last few kept): never all held at once."""

    def __init__(self, finder: CopyFinder, contents: Sequence[Content]) -> None:
        self._finder, self._contents = finder, contents
        self._read = lru_cache(maxsize=64)(lambda i: finder.features(contents[i]))

    def __len__(self) -> int:
        return len(self._contents)

    def __getitem__(self, i: int) -> copy_features.Features:  # type: ignore[override]
        return self._read(i)

    def descriptors(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        """Image i's plain and mirrored descriptors, all the keypoint index reads of it: two
        arrays of its cached file, not all of them."""
        return self._finder.descriptors(self._contents[i])
