"""Naming how a derived copy was made, from its fit onto its source.

A kind reads ``base[+squashed-R][+mirrored][+rotated-N][+inverted][+tones...][+detail...]``:

- base: ``crop`` (it covers under 80% of its source), ``padded`` (one of the two had constant
  borders), ``re-encoded`` (the same size once turned, other bytes) or ``resized``;
- ``squashed-R``: the aspect ratio changed by R (1.6: one axis scaled 1.6 times the other);
- ``mirrored``, ``rotated-N`` (the copy is its source turned N degrees, as ``np.rot90`` turns:
  counter-clockwise as displayed);
- ``inverted``: dark and bright swapped (MONOCHROME1 against MONOCHROME2);
- tones, from the curve that maps the source's grey levels onto the copy's: ``brightened`` or
  ``darkened`` (mean), ``contrast-stretched`` or ``contrast-reduced`` (spread), ``equalised``
  (the copy's histogram is flat), ``gamma`` (another curve), ``equalised-locally`` (no one curve
  fits: CLAHE);
- detail: ``blurred`` or ``sharpened`` (the copy's fine detail weaker or stronger than the
  source's), ``noisy`` (detail the source lacks), ``marked`` (a burnt-in label or marker).

Photometric names compare the two pictures at the resolution they share, so a change too fine to
survive a copy's downsizing is not named.
"""

from __future__ import annotations

import numpy as np

from osteo_pipeline.core.copy_check import Aligned, Match, read_backwards, sample
from osteo_pipeline.core.copy_fit import Pose

#: Aspect changes below this are not named.
MIN_SQUASH = 1.08


def geometry(
    match: Match,
    mirrored: bool,
    trimmed: tuple[bool, bool],
    copy_size: tuple[int, int],
    source_size: tuple[int, int],
) -> list[str]:
    """Base, aspect change and orientation. ``trimmed``: (copy, source) had constant borders;
    sizes are (width, height), (0, 0) when not known."""
    assert match.transform is not None
    linear = match.transform[:, :2]
    u, _, vt = np.linalg.svd(linear)
    rotation = u @ vt
    angle = float(np.degrees(np.arctan2(rotation[1, 0], rotation[0, 0])))
    quarter = round(angle / 90) % 4
    scales = np.linalg.norm(linear, axis=0)  # source pixels per copy pixel along x and y
    squash = float(scales.max() / scales.min())
    orientation = ["mirrored"] if mirrored else []
    if abs(angle - 90 * round(angle / 90)) > 2:
        orientation.append(f"rotated-{round(angle) % 360}")
    elif quarter:
        orientation.append(f"rotated-{90 * quarter}")
    if match.cover < 0.8:
        base = "crop"
    elif trimmed[0] != trimmed[1]:
        base = "padded"
    else:
        turned = tuple(copy_size[::-1]) if quarter % 2 else tuple(copy_size)
        same = turned == tuple(source_size) != (0, 0) and squash < MIN_SQUASH
        base = "re-encoded" if same else "resized"
    aspect = [f"squashed-{squash:.1f}"] if squash >= MIN_SQUASH else []
    return [base, *aspect, *orientation]


#: Pixels (evenly spread over the overlap) that tones are read from.
TONE_SAMPLE = 8_000


def _tone_curve(
    source: np.ndarray, copy: np.ndarray, bins: int = 24
) -> tuple[np.ndarray, np.ndarray]:
    """(levels, curve): the source's median grey level at each of ``bins`` quantiles of its
    values, and the copy's median there."""
    order = np.argsort(source, kind="stable")[: len(source) // bins * bins].reshape(bins, -1)
    return np.median(source[order], axis=1), np.median(copy[order], axis=1)


#: How far (a share of the copy's range) the tone curve may bend from a straight line and still
#: be a change of brightness and contrast only.
BENT = 0.06


def tones(aligned: Aligned) -> list[str]:
    """Names of the change of grey levels from source to copy, read from their low-passed
    pictures (blur, sharpening and noise leave them alone) where they overlap."""
    chosen = sample(aligned.overlap, TONE_SAMPLE)
    source = aligned.source.smooth.ravel()[chosen].astype(np.float64)
    copy = aligned.copy.smooth.ravel()[chosen].astype(np.float64)
    spread_s, spread_c = float(source.std()) + 1e-6, float(copy.std()) + 1e-6
    levels, curve = _tone_curve(source, copy)
    if float(np.median(np.abs(copy - np.interp(source, levels, curve)))) > 0.045 * spread_c:
        return ["equalised-locally"]  # no one curve maps the source's tones onto the copy's
    names = []
    shift = float(copy.mean() - source.mean())
    if abs(shift) > 0.15 * spread_s:
        names.append("brightened" if shift > 0 else "darkened")
    slope, intercept = np.polyfit(levels, curve, 1)
    bend = float(np.abs(curve - (slope * levels + intercept)).max()) / (np.ptp(curve) + 1e-6)
    levels_seen = aligned.copy.pixels.ravel()[chosen]  # an equalised histogram is flat
    counts = np.histogram(levels_seen, bins=16, range=(0, 256))[0]
    if bend > BENT and counts.std() < 0.5 * counts.mean():
        return [*names, "equalised"]
    if bend > BENT:
        names.append("gamma")
    if not 0.85 <= spread_c / spread_s <= 1.18:
        names.append("contrast-stretched" if spread_c > spread_s else "contrast-reduced")
    return names


#: Detail gain (copy over source, at their shared resolution) below which a copy is named
#: blurred, and above which sharpened.
BLURRED, SHARPENED = 0.5, 1.45
#: Noise (grey levels) the copy holds over the source's flattest areas, from which it is noisy.
NOISY = 1.5
#: Share of the overlap where the copy is white and far brighter than its source, from which it
#: carries a burnt-in label or marker.
MARKED = 0.0015


def detail_changes(aligned: Aligned) -> list[str]:
    """Names of what changed in the fine detail: blur, sharpening, noise, a burnt-in label."""
    source, copy = aligned.source, aligned.copy
    compared = sample(aligned.compared)
    source_detail, copy_detail = source.highpass.ravel(), copy.highpass.ravel()
    gain = float(copy_detail[compared] @ source_detail[compared]) / (
        float(source_detail[compared] @ source_detail[compared]) + 1e-6
    )
    chosen = sample(aligned.overlap, TONE_SAMPLE)
    source_levels, copy_levels = source.pixels.ravel()[chosen], copy.pixels.ravel()[chosen]
    gain /= (float(copy_levels.std()) + 1e-6) / (float(source_levels.std()) + 1e-6)  # tone slope
    names = ["blurred"] if gain < BLURRED else ["sharpened"] if gain > SHARPENED else []
    local = source.local.ravel()[chosen]
    flattest = chosen[local <= np.quantile(local, 0.25)]
    if float(copy_detail[flattest].std() - source_detail[flattest].std()) > NOISY:
        names.append("noisy")
    levels, curve = _tone_curve(source_levels, copy_levels)
    excess = copy_levels - np.interp(source_levels, levels, curve)
    burnt_in = (copy_levels >= 250) & (excess > 60)  # white where the source is not
    if float(burnt_in.mean()) > MARKED:
        names.append("marked")
    return names


#: What a copy loses that its original has: detail (blur), clean flat areas (noise), an
#: unmarked picture (a burnt-in label).
LOSSES = ("blurred", "noisy", "marked")


def copy_first(
    match: Match,
    mirrored: bool,
    trimmed: tuple[bool, bool],
    copy_size: tuple[int, int],
    source_size: tuple[int, int],
) -> bool:
    """Whether a link between two pictures that are not crops of each other should be read the
    other way round. Either could be the original: the one without padding is taken for it
    (``trimmed``: the copy's, the source's constant borders were cut), then the larger file
    (copies are made smaller; sizes are (width, height), (0, 0) when not known, then the finer
    working picture), and of two of one size, the one the other lost something from
    (:data:`LOSSES`)."""
    if match.transform is None or match.aligned is None or min(match.cover, match.inside) < 0.8:
        return False
    if trimmed[0] != trimmed[1]:
        return trimmed[1]
    pixels = float(np.prod(copy_size)), float(np.prod(source_size))
    if min(pixels) > 0:
        larger = pixels[0] / pixels[1]  # the copy's file against the source's
    else:
        larger = 1 / abs(float(np.linalg.det(match.transform[:, :2])))
    if abs(np.log(larger)) > 0.1:
        return larger > 1
    forward = detail_changes(match.aligned)
    backward = detail_changes(read_backwards(match, mirrored).aligned)
    return sum(n in LOSSES for n in backward) > sum(n in LOSSES for n in forward)


def name(
    match: Match,
    pose: Pose,
    trimmed: tuple[bool, bool],
    copy_size: tuple[int, int],
    source_size: tuple[int, int],
) -> str:
    """The kind of a verified link (see the module's documentation)."""
    parts = geometry(match, pose.mirrored, trimmed, copy_size, source_size)
    parts += ["inverted"] if pose.inverted else []
    if match.aligned is not None:
        parts += tones(match.aligned) + detail_changes(match.aligned)
    return "+".join(parts)
