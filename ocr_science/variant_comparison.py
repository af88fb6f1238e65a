"""What the corrected model changes against the published one: pixels and building scores.

Pure counting over two sets of region rasters (or two sets of sampled RPS values); the
``ocr compare-variants`` command feeds it region by region and adds the counts up.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ocr_science.scoring import risk_score

# The variables the variants compute differently (the others are copied from the inputs).
WIND_ADJUSTED: tuple[str, ...] = ("bp_2011", "bp_2047", "rps_2011", "rps_2047")
# The tolerance the published data is reproduced to (docs/design.md §5):
# |a − b| ≤ 1e-4 · max(|a|, |b|).
RELATIVE_TOLERANCE = 1e-4


@dataclass
class VariableDifference:
    """One variable's differences, summed over regions."""

    pixels: int = 0  # pixels where either variant has a value
    changed: int = 0  # … differing by more than the relative tolerance, or NaN in one only
    missing_in_one: int = 0  # … finite in one variant and NaN in the other
    max_abs: float = 0.0
    max_rel: float = 0.0

    @property
    def changed_share(self) -> float:
        return self.changed / self.pixels if self.pixels else 0.0

    def add(self, a: np.ndarray, b: np.ndarray) -> None:
        a64, b64 = a.astype(np.float64), b.astype(np.float64)
        fa, fb = np.isfinite(a64), np.isfinite(b64)
        both = fa & fb
        diff = np.abs(a64[both] - b64[both])
        scale = np.maximum(np.abs(a64[both]), np.abs(b64[both]))
        rel = np.divide(diff, scale, out=np.zeros_like(diff), where=scale > 0)
        one = int(np.count_nonzero(fa ^ fb))
        self.pixels += int(np.count_nonzero(fa | fb))
        self.changed += int(np.count_nonzero(rel > RELATIVE_TOLERANCE)) + one
        self.missing_in_one += one
        if diff.size:
            self.max_abs = max(self.max_abs, float(diff.max()))
            self.max_rel = max(self.max_rel, float(rel.max()))


@dataclass
class ScoreChanges:
    """Buildings whose risk score differs between the variants, per year."""

    buildings: int = 0  # buildings sampled in the regions
    scored_in_both: int = 0  # … with a finite RPS in both variants
    changed: dict[int, int] = field(default_factory=dict)  # year → buildings with a new score
    missing_in_one: dict[int, int] = field(default_factory=dict)

    def add(self, year: int, rps_a: np.ndarray, rps_b: np.ndarray) -> None:
        fa, fb = np.isfinite(rps_a), np.isfinite(rps_b)
        both = fa & fb
        moved = risk_score(rps_a[both]) != risk_score(rps_b[both])
        self.changed[year] = self.changed.get(year, 0) + int(np.count_nonzero(moved))
        self.missing_in_one[year] = self.missing_in_one.get(year, 0) + int(
            np.count_nonzero(fa ^ fb)
        )


@dataclass
class VariantComparison:
    """Published against corrected over a set of regions."""

    regions: list[str] = field(default_factory=list)
    variables: dict[str, VariableDifference] = field(
        default_factory=lambda: {name: VariableDifference() for name in WIND_ADJUSTED}
    )
    scores: ScoreChanges = field(default_factory=ScoreChanges)

    def add_rasters(self, published: dict[str, np.ndarray], corrected: dict[str, np.ndarray]):
        for name, diff in self.variables.items():
            diff.add(published[name], corrected[name])

    def add_buildings(
        self, published: dict[int, np.ndarray], corrected: dict[int, np.ndarray]
    ) -> None:
        """Sampled RPS per year of the same buildings under both variants."""
        years = sorted(published)
        self.scores.buildings += len(published[years[0]]) if years else 0
        if years:
            scored = np.ones(len(published[years[0]]), dtype=bool)
            for year in years:
                scored &= np.isfinite(published[year]) & np.isfinite(corrected[year])
            self.scores.scored_in_both += int(np.count_nonzero(scored))
        for year in years:
            self.scores.add(year, published[year], corrected[year])

    def as_dict(self) -> dict:
        return {
            "regions": self.regions,
            "relative_tolerance": RELATIVE_TOLERANCE,
            "variables": {
                name: {
                    "pixels": d.pixels,
                    "changed": d.changed,
                    "changed_share": d.changed_share,
                    "missing_in_one": d.missing_in_one,
                    "max_abs_difference": d.max_abs,
                    "max_relative_difference": d.max_rel,
                }
                for name, d in self.variables.items()
            },
            "buildings": {
                "sampled": self.scores.buildings,
                "scored_in_both": self.scores.scored_in_both,
                "score_changed": {str(y): n for y, n in self.scores.changed.items()},
                "missing_in_one": {str(y): n for y, n in self.scores.missing_in_one.items()},
            },
        }
