"""What every published product says about itself: the dataset attributes of the raster store
and the metadata of the vector products, as the published pipeline writes them
(``ocr/config.py:742-753`` and ``:1004-1014`` at carbonplan/ocr 0a1b285; the Overture notice as
the published map states it, carbonplan/ocr-web ``lib/config.ts``)."""

from __future__ import annotations

PROVIDER = "CarbonPlan"
TERMS_OF_ACCESS = "https://docs.carbonplan.org/ocr/en/latest/terms-of-data-access.html"
DATA_SOURCES = "https://docs.carbonplan.org/ocr/en/latest/reference/data-sources.html"
OVERTURE_NOTICE = (
    "Contains information from the Overture Maps Foundation database, which is made available "
    "here under the Open Database License (ODbL), a copy of which is available at "
    "https://opendatacommons.org/licenses/odbl/1-0/."
)


def version_label(version: str | None) -> str:
    """The ``version`` every product carries: ``X.Y.Z``, or ``unversioned`` (qa, staging)."""
    return version or "unversioned"


def raster_attributes(version: str | None) -> dict[str, str]:
    """The raster store's dataset attributes (CC BY 4.0), in the published order."""
    return {
        "version": version_label(version),
        "provider": PROVIDER,
        "terms_of_access": TERMS_OF_ACCESS,
        "data_sources": DATA_SOURCES,
        "license_name": "CC-BY-4.0",
        "license_url": "https://creativecommons.org/licenses/by/4.0/",
    }


def vector_metadata(version: str | None) -> dict[str, str]:
    """The 7 keys of every vector product (GeoParquet ``_common_metadata``, the analysis files'
    CSV header and GeoJSON ``metadata`` member): ODbL, as the buildings are Overture's."""
    return {
        "version": version_label(version),
        "provider": PROVIDER,
        "terms_of_access": TERMS_OF_ACCESS,
        "data_sources": DATA_SOURCES,
        "license_name": "ODBL",
        "license_url": "https://opendatacommons.org/licenses/odbl/",
        "notice": OVERTURE_NOTICE,
    }
