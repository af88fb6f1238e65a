"""``ocr compare-variants``: the published and corrected models on the same regions, in
process, nothing written — what the correction changes (docs/methods/variants.md)."""

from __future__ import annotations

from collections.abc import Callable

from ocr_resources.storage import OcrStorage
from ocr_science.fire_model import YEARS, compute_region_rasters
from ocr_science.sampling import centroids_deg, nearest_pixel
from ocr_science.variant_comparison import VariantComparison

COMPARED = ("published", "corrected")


def compare_variants(
    storage: OcrStorage,
    region_ids: list[str],
    on_region: Callable[[str], None] = lambda _: None,
) -> VariantComparison:
    """Both variants' rasters for each region, compared pixel by pixel and at each of the
    region's buildings (centroid inside, nearest pixel, as ``region_buildings`` samples)."""
    grid = storage.regions.region_grid()
    comparison = VariantComparison(regions=list(region_ids))
    for region_id in region_ids:
        region = grid.region(region_id)
        inputs = storage.regions.read_region_inputs(grid, region)
        published, corrected = (compute_region_rasters(inputs, variant=v) for v in COMPARED)
        comparison.add_rasters(published, corrected)
        buildings = storage.regions.read_buildings(region)
        lon, lat = centroids_deg(buildings.geometry.values)
        inside = region.contains(lon, lat)
        rows, cols = nearest_pixel(grid, region, lon[inside], lat[inside])
        comparison.add_buildings(
            {y: published[f"rps_{y}"][rows, cols] for y in YEARS},
            {y: corrected[f"rps_{y}"][rows, cols] for y in YEARS},
        )
        on_region(region_id)
    return comparison
