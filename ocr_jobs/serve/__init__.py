"""``ocr serve``: the map page and one environment's PMTiles on 127.0.0.1.

- ``ranges``: the byte ranges PMTiles readers ask for
- ``site``: what is served (the page's folder, the archives, the page's configuration)
- ``server``: the HTTP server
"""

from ocr_jobs.serve.ranges import ByteRange, RangeNotSatisfiable, parse_range
from ocr_jobs.serve.server import HOST, MapRequestHandler, MapServer, serve_in_thread
from ocr_jobs.serve.site import (
    VENDOR_FILES,
    WEB_DIR,
    MapSite,
    ServedFile,
    ServeError,
    map_site,
    missing_vendor_files,
    page_config,
    stale_outputs,
)

__all__ = [
    "HOST",
    "VENDOR_FILES",
    "WEB_DIR",
    "ByteRange",
    "MapRequestHandler",
    "MapServer",
    "MapSite",
    "RangeNotSatisfiable",
    "ServeError",
    "ServedFile",
    "map_site",
    "missing_vendor_files",
    "page_config",
    "parse_range",
    "serve_in_thread",
    "stale_outputs",
]
