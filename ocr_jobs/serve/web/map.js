// The wildfire risk map: MapLibre GL JS reading the environment's PMTiles and the risk surface's
// PNG tiles through `ocr serve`.
// Everything it loads comes from that server (libraries, outline, archives): no CDN, no basemap.
import * as maplibregl from "./vendor/maplibre-gl.mjs";

const { Protocol, PMTiles } = window.pmtiles; // vendor/pmtiles.js (IIFE build)

// Which census level colours the map at which zoom (MapLibre maxzoom is exclusive). Tracts
// stay as a fading tint under the buildings so a click there still finds its census unit.
const REGION_LEVELS = [
  { level: "states", minzoom: 0, maxzoom: 5, label: "state" },
  { level: "counties", minzoom: 5, maxzoom: 8, label: "county" },
  { level: "tracts", minzoom: 8, maxzoom: 24, label: "tract" },
];
// The risk surface: PNG tiles of the pyramid, one source per year, under every vector layer;
// past the finest level MapLibre draws that level's tiles enlarged (the source's maxzoom).
const SURFACE = (y) => `surface-${y}`;
const CENTROIDS = { minzoom: 11, maxzoom: 14 };
const BUILDINGS = { minzoom: 14 };
const YEARS = ["2011", "2047"];

const sharedView = Boolean(location.hash); // #zoom/lat/lon from a shared link wins over fitting
const config = await (await fetch("/config.json")).json();
// with a surface under them, census areas are a lighter tint so the surface reads through
const areaTint = config.raster ? 0.5 : 1;
const colors = config.colors;
const edges = config.score_edges;
let year = "2011";
let lastClick = null;
let surfaceOpacity = Number(document.getElementById("surface-opacity").value);

const protocol = new Protocol();
maplibregl.addProtocol("pmtiles", protocol.tile);
const archiveUrl = (name) => `${location.origin}${config.archives[name]}`;
const has = (name) => name in config.archives;
// The archives' properties are numeric keys ("0", "1", …, as OCR publishes them); the page
// config says which key holds which column, per archive.
const key = (archive, column) => config.keys[archive][column];
const BUILDING_ARCHIVE = { buildings: "buildings", centroids: "building_centroids" };

// Risk score 0–10 from RPS, with the pipeline's own bin edges (lower-inclusive; 0 only for 0).
function scoreExpression(property) {
  const value = ["to-number", ["get", property], 0];
  const steps = ["step", value, 1];
  edges.forEach((edge, i) => steps.push(edge, i + 2));
  return ["case", ["<=", value, 0], 0, steps];
}
function colorExpression(property) {
  const match = ["match", scoreExpression(property)];
  colors.forEach((color, score) => match.push(score, color));
  match.push(colors[0]);
  return match;
}

function scoreOf(rps) {
  if (!(rps > 0)) return 0;
  let score = 1;
  for (const edge of edges) if (rps >= edge) score += 1;
  return score;
}

function paintFor(layerId) {
  if (layerId in BUILDING_ARCHIVE) return colorExpression(key(BUILDING_ARCHIVE[layerId], `rps_${year}`));
  return colorExpression(key("regions", `rps_${year}_mean`));
}

async function outline() {
  const topology = await (await fetch("/static/vendor/states-10m.json")).json();
  return window.topojson.feature(topology, topology.objects.states);
}

function style(states) {
  const sources = { outline: { type: "geojson", data: states } };
  const layers = [
    { id: "background", type: "background", paint: { "background-color": "#dde5ea" } },
    { id: "land", type: "fill", source: "outline", paint: { "fill-color": "#fbfaf7" } },
  ];
  if (config.raster) {
    const { tiles, minzoom, maxzoom, bounds } = config.raster;
    for (const y of YEARS) {
      sources[SURFACE(y)] = {
        type: "raster",
        tiles: [`${location.origin}${tiles[y]}`],
        tileSize: 256,
        minzoom,
        maxzoom,
        bounds,
      };
      layers.push({
        id: SURFACE(y),
        type: "raster",
        source: SURFACE(y),
        layout: { visibility: y === year ? "visible" : "none" },
        paint: { "raster-opacity": surfaceOpacity, "raster-resampling": "nearest", "raster-fade-duration": 0 },
      });
    }
  }
  if (has("regions")) {
    sources.regions = { type: "vector", url: `pmtiles://${archiveUrl("regions")}` };
    for (const { level, minzoom, maxzoom } of REGION_LEVELS) {
      layers.push({
        id: `${level}-fill`,
        type: "fill",
        source: "regions",
        "source-layer": level,
        minzoom,
        maxzoom,
        paint: {
          "fill-color": paintFor(`${level}-fill`),
          "fill-opacity": level === "tracts"
            ? ["interpolate", ["linear"], ["zoom"], 10, 0.85 * areaTint, 11, 0.45 * areaTint, 13, 0.25 * areaTint, 14, 0.1 * areaTint]
            : 0.85 * areaTint,
        },
      });
      layers.push({
        id: `${level}-line`,
        type: "line",
        source: "regions",
        "source-layer": level,
        minzoom,
        maxzoom,
        paint: { "line-color": "#ffffff", "line-width": level === "tracts" ? 0.8 : 1.2 },
      });
    }
  }
  layers.push({
    id: "state-borders",
    type: "line",
    source: "outline",
    paint: { "line-color": "#7d8a93", "line-width": 1 },
  });
  // a building archive's one layer ("risk") drawn as `type`, its source named like the layer
  const buildingLayer = (archive, id, type, zooms, paint) => {
    sources[id] = { type: "vector", url: `pmtiles://${archiveUrl(archive)}` };
    layers.push({ id, type, source: id, "source-layer": "risk", ...zooms, paint });
  };
  if (has("building_centroids")) {
    buildingLayer("building_centroids", "centroids", "circle", CENTROIDS, {
      "circle-color": paintFor("centroids"),
      "circle-radius": ["interpolate", ["linear"], ["zoom"], 11, 2, 14, 4.5],
      "circle-stroke-color": "rgba(0, 0, 0, 0.6)",
      "circle-stroke-width": 0.6,
    });
  }
  if (has("buildings")) {
    buildingLayer("buildings", "buildings", "fill", BUILDINGS, {
      "fill-color": paintFor("buildings"),
      "fill-outline-color": "#3a3a3a",
    });
  }
  return { version: 8, sources, layers };
}

const COLORED_LAYERS = ["buildings", "centroids", ...REGION_LEVELS.map((l) => `${l.level}-fill`)];
const CLICKABLE = COLORED_LAYERS; // buildings first: the most specific feature wins

function setYear(value) {
  if (!YEARS.includes(String(value))) throw new Error(`no year ${value}`);
  year = String(value);
  document.getElementById(`year-${year}`).checked = true;
  for (const id of COLORED_LAYERS) {
    if (!map.getLayer(id)) continue;
    map.setPaintProperty(id, id === "centroids" ? "circle-color" : "fill-color", paintFor(id));
  }
  for (const y of YEARS) {
    if (map.getLayer(SURFACE(y))) map.setLayoutProperty(SURFACE(y), "visibility", y === year ? "visible" : "none");
  }
  renderLegend();
  if (lastClick) showPopup(lastClick.lngLat, lastClick.features);
}

function renderLegend() {
  document.getElementById("legend-year").textContent = year;
  const fmt = (v) => Number(v.toPrecision(3)).toString();
  const rows = colors.map((color, score) => {
    let range = "no risk (0)";
    if (score === 1) range = `< ${fmt(edges[0])}`;
    else if (score > 1 && score < colors.length - 1) range = `${fmt(edges[score - 2])} – ${fmt(edges[score - 1])}`;
    else if (score === colors.length - 1) range = `≥ ${fmt(edges[edges.length - 1])}`;
    return `<li><span class="score">${score}</span><span class="swatch" style="background:${color}"></span><span>${range}</span></li>`;
  });
  document.getElementById("legend-rows").innerHTML = rows.join("");
}

const escape = (text) => String(text).replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`);
const number = (value, digits = 3) => (value === undefined || value === null ? "–" : Number(value).toFixed(digits));

function histogramSvg(counts) {
  const width = 220;
  const height = 60;
  const bar = width / counts.length;
  const top = Math.max(1, ...counts);
  const bars = counts.map((count, score) => {
    const h = Math.round((count / top) * (height - 12));
    return `<rect x="${score * bar + 1}" y="${height - 12 - h}" width="${bar - 2}" height="${h}" fill="${colors[score]}" stroke="#555" stroke-width="0.3"><title>score ${score}: ${count}</title></rect>` +
      `<text x="${score * bar + bar / 2}" y="${height - 2}" font-size="8" text-anchor="middle">${score}</text>`;
  });
  return `<svg class="histogram" width="${width}" height="${height}" role="img" aria-label="risk score histogram">${bars.join("")}</svg>`;
}

function unitHtml(feature) {
  const value = (column) => feature.properties[key("regions", column)];
  const level = REGION_LEVELS.find((l) => `${l.level}-fill` === feature.layer.id);
  let histogram = [];
  try {
    // a list property is its JSON text in the tile (tippecanoe stores arrays so)
    histogram = JSON.parse(value(`risk_score_${year}_hist`) || "[]");
  } catch {
    histogram = [];
  }
  const rows = [
    ["buildings", value("building_count"), 0],
    [`mean RPS ${year} (%)`, value(`rps_${year}_mean`), 3],
    [`median RPS ${year} (%)`, value(`rps_${year}_median`), 3],
  ];
  return `<h3>${escape(level ? level.label : "area")}: ${escape(value("NAME") ?? "")}</h3>` +
    `<div>GEOID <code class="geoid">${escape(value("GEOID"))}</code></div>` +
    `<table>${rows.map(([k, v, d]) => `<tr><td>${k}</td><td class="value">${k === "buildings" ? escape(v) : number(v, d)}</td></tr>`).join("")}</table>` +
    `<div class="muted">risk score histogram ${year}</div>${histogramSvg(histogram)}`;
}

function buildingHtml(feature) {
  // centroids carry the two RPS only: the other rows show "–" there
  const keys = config.keys[BUILDING_ARCHIVE[feature.layer.id]];
  const value = (column) => (column in keys ? feature.properties[keys[column]] : undefined);
  const rows = YEARS.map((y) => [`RPS ${y} (%)`, number(value(`rps_${y}`)), `score ${scoreOf(Number(value(`rps_${y}`)))}`]);
  rows.push(...YEARS.map((y) => [`BP ${y}`, number(value(`bp_${y}`), 4), ""]));
  rows.push(["CRPS (%)", number(value("crps_scott"), 2), ""]);
  return `<h3>Building</h3><table class="building">${rows.map((r) => `<tr>${r.map((c, i) => `<td class="${i ? "value" : ""}">${c}</td>`).join("")}</tr>`).join("")}</table>`;
}

let popup = null;
function showPopup(lngLat, features) {
  const building = features.find((f) => f.layer.id === "buildings" || f.layer.id === "centroids");
  const unit = features.find((f) => f.layer.id.endsWith("-fill"));
  if (!building && !unit) return;
  const html = `<div class="popup">${building ? buildingHtml(building) : ""}${unit ? unitHtml(unit) : ""}</div>`;
  if (popup) popup.remove();
  popup = new maplibregl.Popup({ maxWidth: "280px" }).setLngLat(lngLat).setHTML(html).addTo(map);
  popup.on("close", () => { if (lastClick && lastClick.popup === popup) lastClick = null; });
  lastClick = { lngLat, features, popup };
}

function describeZoom() {
  const z = map.getZoom();
  const shown = [];
  for (const { level, minzoom, maxzoom } of REGION_LEVELS) if (z >= minzoom && z < maxzoom) shown.push(level);
  if (z >= CENTROIDS.minzoom && z < CENTROIDS.maxzoom) shown.push("building centroids");
  if (z >= BUILDINGS.minzoom) shown.push("buildings");
  document.getElementById("zoom-note").textContent = `zoom ${z.toFixed(1)}: ${shown.join(", ")}`;
}

const map = new maplibregl.Map({
  container: "map",
  style: style(await outline()),
  hash: true,
  attributionControl: { customAttribution: "Open Climate Risk on Dagster · outline: us-atlas (US Census)" },
  maxZoom: 18,
});
map.addControl(new maplibregl.NavigationControl({ showCompass: false }), "top-right");
map.addControl(new maplibregl.ScaleControl(), "bottom-right");
map.on("error", (event) => console.error("map error:", event.error ? event.error.message : event));
map.on("zoom", describeZoom);
map.on("click", (event) => {
  const layers = CLICKABLE.filter((id) => map.getLayer(id));
  const features = map.queryRenderedFeatures(event.point, { layers });
  if (features.length) showPopup(event.lngLat, features);
});
for (const id of CLICKABLE) {
  map.on("mouseenter", id, () => { map.getCanvas().style.cursor = "pointer"; });
  map.on("mouseleave", id, () => { map.getCanvas().style.cursor = ""; });
}
document.querySelectorAll('input[name="year"]').forEach((input) => {
  input.addEventListener("change", () => setYear(input.value));
});
function setSurfaceOpacity(value) {
  surfaceOpacity = Math.min(1, Math.max(0, Number(value)));
  document.getElementById("surface-opacity").value = String(surfaceOpacity);
  for (const y of YEARS) {
    if (map.getLayer(SURFACE(y))) map.setPaintProperty(SURFACE(y), "raster-opacity", surfaceOpacity);
  }
}
document.getElementById("surface-opacity").addEventListener("input", (event) => setSurfaceOpacity(event.target.value));
const surfaceNote = document.getElementById("surface-note");
if (config.raster) {
  surfaceNote.textContent = `mean RPS per pixel, zoom ${config.raster.minzoom}–${config.raster.maxzoom} (enlarged beyond)`;
} else {
  document.getElementById("surface-opacity").disabled = true;
  surfaceNote.textContent = "no risk surface in this environment: the pyramid is optional (ocr deploy --create-pyramid)";
}

const label = config.version ? `${config.environment} v${config.version}` : config.environment;
document.getElementById("environment").textContent = `environment: ${label}`;
const missing = ["regions", "building_centroids", "buildings"].filter((n) => !has(n));
if (missing.length) {
  const note = document.getElementById("missing");
  note.hidden = false;
  note.textContent = `not materialized yet: ${missing.join(", ")}.pmtiles`;
}
if (config.stale) {
  const banner = document.getElementById("stale");
  banner.hidden = false;
  banner.textContent = `stale: ${config.stale.outputs.join(", ")} older than the regions (changed ${config.stale.regions_updated}); rebuild with ocr deploy`;
}
renderLegend();

const started = performance.now();
const firstIdle = new Promise((resolve) => map.once("idle", () => resolve(performance.now() - started)));
if (!sharedView) {
  const first = has("regions") ? "regions" : Object.keys(config.archives)[0];
  const archive = new PMTiles(archiveUrl(first));
  protocol.add(archive);
  const h = await archive.getHeader();
  map.fitBounds([[h.minLon, h.minLat], [h.maxLon, h.maxLat]], { padding: 40, animate: false });
}
describeZoom();

// Hooks for tests and the console: settle() resolves once the current view is fully drawn.
window.map = map;
window.ocrMap = {
  map,
  setYear,
  setSurfaceOpacity,
  closePopup: () => { if (popup) popup.remove(); },
  year: () => year,
  firstIdle,
  settle: () => new Promise((resolve) => { map.once("idle", resolve); map.triggerRepaint(); }),
};
