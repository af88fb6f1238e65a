"""MkDocs hook (``hooks:`` in mkdocs.yml): the pages' generated parts, made at build time from the
code and the recorded benchmarks, so no figure or table is retyped by hand.

A page asks for a part with a marker on a line of its own, ``<!-- generated: NAME -->``; the
hook replaces it with ``GENERATED[NAME]()``. The parts:

- ``cli``: every ``ocr`` command and option, from the Typer app (``ocr_jobs.cli:app``) through
  its click command tree;
- ``settings``: every ``OCR_*`` setting, from the pydantic-settings model
  (``ocr_resources.settings.OcrSettings``) with the comments beside each field in its source;
- ``assets``, ``checks``, ``jobs``: from the Dagster ``Definitions`` the code location builds
  (``ocr_jobs.definitions.build_definitions`` on ``envs/local.env``);
- ``layout``: every module of the four packages with its docstring's first paragraph;
- ``profiles``: the compute profiles (``ocr_assets.graph.profile_table_markdown``);
- ``conus``: the CONUS cost model's table (``bench.conus --markdown``);
- ``bench-*``: tables read from the records under ``bench/`` (``*_results.jsonl`` and the
  record files beside them).

Every record file under ``bench/`` is also published with the site (``bench/<name>``), so a
table's source is one click away. Nothing here reads the network or writes outside the site.
"""

import ast
import functools
import io
import json
import re
import sys
import tokenize
import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "bench"
MARKER = re.compile(r"^<!-- generated: ([a-z0-9-]+) -->$", re.MULTILINE)
RECORD_SUFFIXES = (".jsonl", ".txt", ".md")


# ---------------------------------------------------------------------------------- helpers


def _cell(value: Any) -> str:
    text = "–" if value is None or value == "" else str(value)
    return text.replace("|", "\\|").replace("\n", " ")


def table(header: Iterable[str], rows: Iterable[Iterable[Any]]) -> str:
    header = list(header)
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_cell(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def records(name: str) -> list[dict[str, Any]]:
    """The JSON lines of ``bench/<name>`` in their recorded order."""
    lines = (BENCH / name).read_text().splitlines()
    return [json.loads(line) for line in lines if line.strip()]


def get(record: dict[str, Any], path: str) -> Any:
    """``record["a"]["b"]`` for ``"a.b"``; None when any part is missing."""
    value: Any = record
    for part in path.split("."):
        if not isinstance(value, dict) or part not in value:
            return None
        value = value[part]
    return value


def source(name: str) -> str:
    return f"*Source: [`bench/{name}`](bench/{name}), generated at build time.*"


def _num(value: Any, digits: int = 1) -> str | None:
    if value is None:
        return None
    if isinstance(value, int | float):
        return f"{value:,.{digits}f}"
    return str(value)


# ---------------------------------------------------------------------------------- the CLI


def cli() -> str:
    import typer.main

    from ocr_jobs.cli import app

    # typer's command classes are its own (not click's): duck-typed here
    root = typer.main.get_command(app)
    out: list[str] = []

    def walk(command: Any, path: list[str]) -> None:
        name = " ".join(path)
        if path[1:]:
            out.append(f"## `{name}`\n")
        text = (command.help or "").strip()
        if text:
            out.append(" ".join(text.split("\f")[0].split()) + "\n")
        rows = []
        context = command.context_class(command)
        for param in command.params:
            if param.name == "help":
                continue
            if param.param_type_name == "argument":
                label = f"`{param.name.upper()}`" + (" …" if param.nargs == -1 else "")
                what = getattr(param, "help", None) or ""
            else:  # the option as --help shows it, with its value's kind and its default
                shown, what = param.get_help_record(context) or (", ".join(param.opts), "")
                label = f"`{shown}`"
            rows.append((label, "yes" if param.required else "", " ".join(what.split())))
        if rows:
            out.append(table(["option", "required", "what"], rows) + "\n")
        for sub_name in sorted(getattr(command, "commands", {})):
            walk(command.commands[sub_name], [*path, sub_name])

    walk(root, ["ocr"])
    return "\n".join(out)


# ---------------------------------------------------------------------------------- settings


def _field_comments(cls: type) -> dict[str, str]:
    """The comment lines right above each field of ``cls`` and the one at its line's end."""
    text = Path(__import__(cls.__module__, fromlist=["_"]).__file__).read_text()
    tree = ast.parse(text)
    node = next(n for n in ast.walk(tree) if isinstance(n, ast.ClassDef) and n.name == cls.__name__)
    comments: dict[int, str] = {}  # whole-line comments
    inline: dict[int, str] = {}  # comments after code
    for tok in tokenize.generate_tokens(io.StringIO(text).readline):
        if tok.type == tokenize.COMMENT:
            whole = tok.line.strip().startswith("#")
            (comments if whole else inline)[tok.start[0]] = tok.string.lstrip("#").strip()
    found: dict[str, str] = {}
    for stmt in node.body:
        if not (isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name)):
            continue
        above, line = [], stmt.lineno - 1
        while line in comments:
            above.insert(0, comments[line])
            line -= 1
        lines = range(stmt.lineno, (stmt.end_lineno or stmt.lineno) + 1)
        after = [inline[n] for n in lines if n in inline]
        parts = [c for c in [*above, *after] if c and "noqa" not in c]
        found[stmt.target.id] = " ".join(parts)
    return found


def _type_name(annotation: Any) -> str:
    """``'local' | 'qa'`` for a Literal, ``int | None``, ``dict[str, Any]``…"""
    import typing

    if typing.get_origin(annotation) is typing.Literal:
        return " | ".join(repr(a) for a in typing.get_args(annotation))
    if isinstance(annotation, type) and not typing.get_args(annotation):
        return annotation.__name__
    return str(annotation).replace("typing.", "")


def settings() -> str:
    from pydantic_core import PydanticUndefined

    from ocr_resources.settings import OcrSettings

    comments = _field_comments(OcrSettings)
    prefix = OcrSettings.model_config.get("env_prefix", "")
    rows = []
    for name, field in OcrSettings.model_fields.items():
        variables = [f"`{prefix}{name.upper()}`"]
        alias = field.validation_alias
        if alias is not None and hasattr(alias, "choices"):
            variables = [f"`{c}`" for c in alias.choices]
        kind = _type_name(field.annotation)
        signs = {"ge": "≥", "gt": ">", "le": "≤", "lt": "<"}
        bounds = [
            f"{sign} {getattr(m, op)}"
            for m in field.metadata
            for op, sign in signs.items()
            if getattr(m, op, None) is not None
        ]
        if field.default is PydanticUndefined and field.default_factory is None:
            default = "required"
        elif field.default_factory is not None:
            default = f"`{field.default_factory()!r}`"
        else:
            default = f"`{field.default!r}`"
        what = " ".join(t for t in (field.description or "", comments.get(name, "")) if t)
        rows.append((" or ".join(variables), f"`{kind}`", default, ", ".join(bounds), what))
    return table(["variable", "type", "default", "bounds", "what"], rows)


# ---------------------------------------------------------------------------------- Dagster


@functools.cache
def _definitions() -> Any:
    """The code location's definitions, built once per build (three pages read them)."""
    from ocr_jobs.definitions import build_definitions
    from ocr_resources.settings import load_settings

    return build_definitions(load_settings(ROOT / "envs" / "local.env"))


def _group_order(key: Any, graph: Any) -> tuple[int, str]:
    from ocr_assets.constants import INPUTS_GROUP, PHASE01_GROUP, PHASE02_GROUP, PHASE03_GROUP

    groups = [INPUTS_GROUP, PHASE01_GROUP, PHASE02_GROUP, PHASE03_GROUP]
    group = graph.get(key).group_name
    return (groups.index(group) if group in groups else len(groups), key.to_user_string())


def assets() -> str:
    from ocr_resources.compute import ComputeProfile

    graph = _definitions().resolve_asset_graph()
    out = []
    for key in sorted(graph.get_all_asset_keys(), key=lambda k: _group_order(k, graph)):
        node = graph.get(key)
        name = key.to_user_string()
        partitions = "–"
        if node.partitions_def is not None:
            count = len(node.partitions_def.get_partition_keys())
            partitions = f"`region_id` (static; {count} in the local catalog)"
        if node.is_materializable:
            profile_name, profile = ComputeProfile.from_tags(dict(node.assets_def.op.tags))
            kind = "materialized"
            profile_text = profile.describe() if profile_name == name else f"as `{profile_name}`"
        else:
            kind = "observable source (observed, never materialized)"
            profile_text = "observed in process"
        upstream = ", ".join(f"`{p.to_user_string()}`" for p in sorted(node.parent_keys)) or "–"
        checks = ", ".join(
            f"`{c.name}`" + (" (blocking)" if graph.get_check_spec(c).blocking else "")
            for c in sorted(node.check_keys, key=lambda c: c.name)
        )
        rows = [
            ("group", f"`{node.group_name}`"),
            ("kind", kind + (", optional" if node.tags.get("ocr/optional") else "")),
            ("kinds", ", ".join(f"`{k}`" for k in sorted(node.kinds)) or "–"),
            ("partitions", partitions),
            ("upstream", upstream),
            ("compute profile", profile_text),
            ("checks", checks or "–"),
        ]
        out.append(f"### `{name}`\n\n{(node.description or '').strip()}\n")
        out.append(table(["", ""], rows) + "\n")
    return "\n".join(out)


def checks() -> str:
    graph = _definitions().resolve_asset_graph()
    rows = []
    for check in sorted(
        graph.asset_check_keys, key=lambda c: (_group_order(c.asset_key, graph), c.name)
    ):
        spec = graph.get_check_spec(check)
        rows.append(
            (
                f"`{check.asset_key.to_user_string()}`",
                f"`{check.name}`",
                "yes" if spec.blocking else "",
                (spec.description or "").strip(),
            )
        )
    return table(["asset", "check", "blocking", "what it checks"], rows)


def jobs() -> str:
    rows = [
        (f"`{job.name}`", (job.description or "").strip())
        for job in _definitions().resolve_all_job_defs()
        if not job.name.startswith("__")
    ]
    return table(["job", "what it runs"], sorted(rows))


# ---------------------------------------------------------------------------------- code layout

PACKAGES = ("ocr_jobs", "ocr_assets", "ocr_resources", "ocr_science")


def layout() -> str:
    """Each module of the four packages with the first paragraph of its docstring."""
    out = []
    for package in PACKAGES:
        rows = []
        for path in sorted((ROOT / package).rglob("*.py")):
            doc = ast.get_docstring(ast.parse(path.read_text())) or ""
            if not doc and path.name == "__init__.py":
                continue  # a bare package marker
            first = " ".join(doc.split("\n\n")[0].split())
            rows.append((f"`{path.relative_to(ROOT)}`", first.replace("``", "`")))
        out.append(f"### `{package}`\n\n" + table(["module", "what"], rows) + "\n")
    return "\n".join(out)


# ---------------------------------------------------------------------------------- compute


def profiles() -> str:
    from ocr_assets.graph import profile_table_markdown

    return profile_table_markdown()


def conus() -> str:
    from bench import conus as model

    printed: list[str] = []
    model.main(["--markdown"], echo=printed.append)
    return (
        printed[0]
        + "\n\n*Generated at build time by `bench/conus.py --markdown` from the records it"
        + " names.*"
    )


# ---------------------------------------------------------------------------------- bench records


@dataclass(frozen=True)
class Column:
    """A column of a record table: its header and how a row's value is read."""

    header: str
    value: Callable[[dict[str, Any]], Any]


def col(header: str, path: str, digits: int | None = None) -> Column:
    """The value at ``path`` (``"a.b"``) of a row, as a number of ``digits`` decimals when
    given."""
    if digits is None:
        return Column(header, lambda row: get(row, path))
    return Column(header, lambda row: _num(get(row, path), digits))


def _one_row(record: dict[str, Any]) -> list[dict[str, Any]]:
    return [record]


@dataclass(frozen=True)
class RecordTable:
    """A table of a record file under ``bench/``: each record gives ``rows`` (by default the
    record itself), each row a cell per column."""

    file: str
    columns: tuple[Column, ...]
    rows: Callable[[dict[str, Any]], list[dict[str, Any]]] = _one_row
    after: str = ""  # a sentence after the source line

    def __call__(self) -> str:
        rows = [row for record in records(self.file) for row in self.rows(record)]
        cells = [[c.value(row) for c in self.columns] for row in rows]
        text = table([c.header for c in self.columns], cells) + "\n\n" + source(self.file)
        return text + (f" {self.after}" if self.after else "")


def _joined(path: str, separator: str = " / ") -> Callable[[dict[str, Any]], str]:
    return lambda row: separator.join(str(v) for v in get(row, path) or [])


def _field_stages(row: dict[str, Any]) -> str:
    return " · ".join(f"{k} {v:.2f}" for k, v in (row.get("field_stages_s") or {}).items())


def _region_runs(record: dict[str, Any]) -> list[dict[str, Any]]:
    """A region-path record's runs, each with its record's fields."""
    return [{**record, **run} for run in record.get("runs", [])]


def _writer_medians(record: dict[str, Any]) -> list[dict[str, Any]]:
    """A raster-write summary's median figures, one row per writer."""
    if record.get("step") != "summary":
        return []
    return [
        {**record, "writer": w, **(get(record, f"median.{w}") or {})} for w in ("shard", "icechunk")
    ]


def _scale_runs(record: dict[str, Any]) -> list[dict[str, Any]]:
    """A phases 02/03 run (records without a configuration are the runs' own summaries)."""
    if "config" not in record:
        return []
    return [{**record, "run_label": (record.get("note") or "").split(":")[0]}]


def _scale_step(step: str) -> Column:
    def cell(row: dict[str, Any]) -> str | None:
        s = get(row, f"run.steps.{step}") or {}
        return f"{_num(s.get('wall_s'))} s / {_num(s.get('ours_anon_mib'), 0)} MiB" if s else None

    return Column(f"`{step}` wall / own anon peak", cell)


SCALE_STEPS = (
    "buildings_geoparquet",
    "region_risk_summary_stats",
    "regional_analysis_files",
    "regional_pmtiles",
    "building_centroid_pmtiles",
    "building_pmtiles",
)

# The tables of record files whose rows are records (or parts of one): one row each.
RECORD_TABLES: dict[str, RecordTable] = {
    "bench-run": RecordTable(
        "run_results.jsonl",
        (
            col("when", "when"),
            col("size", "size"),
            Column("window (px)", _joined("window", " × ")),
            col("field wall s", "stages.field.wall_s", 2),
            col("CPU s", "stages.field.cpu_s", 1),
            col("peak RSS GiB", "stages.field.peak_rss_gib", 2),
            Column("field stages, s", _field_stages),
            col("max rel. diff. from reference", "check.max_relative_error"),
            col("note", "note"),
        ),
    ),
    "bench-region-path": RecordTable(
        "region_path_results.jsonl",
        (
            col("when", "when"),
            col("chunking", "chunking"),
            col("size", "size"),
            col("region", "region"),
            col("run", "mode"),
            col("whole command s", "wall_s", 1),
            col("before the run s", "before_run_s", 1),
            col("region's own work s", "own_work_s", 1),
            Column(
                "peak RSS GiB",
                lambda row: _num(row.get("peak_rss_gib") or row.get("tree_peak_rss_gib"), 2),
            ),
            col("note", "note"),
        ),
        rows=_region_runs,
    ),
    "bench-ui-path": RecordTable(
        "ui_path_results.jsonl",
        (
            col("when", "when"),
            col("size", "size"),
            Column("regions", lambda row: len(row.get("regions", []))),
            col("runs", "ui_backfill.runs"),
            col("`ocr deploy` s", "deploy.wall_s", 1),
            col("UI: launch → last region s", "ui_backfill.launch_to_last_region_s", 1),
            col("UI: launch → backfill done s", "ui_backfill.wall_s", 1),
            col("UI / deploy", "ui_over_deploy", 2),
            col("note", "note"),
        ),
    ),
    "bench-raster-tiles": RecordTable(
        "raster_tiles_results.jsonl",
        (
            col("date", "date"),
            col("zooms", "zooms"),
            col("tiles", "cold.tiles"),
            col("server start s", "server_start_seconds", 1),
            col("cold median ms", "cold.median_ms", 1),
            col("cold p95 ms", "cold.p95_ms", 1),
            col("warm median ms", "warm.median_ms", 1),
            col("warm p95 ms", "warm.p95_ms", 1),
            col("warm max ms", "warm.max_ms", 1),
            col("note", "note"),
        ),
    ),
    "bench-raster-write": RecordTable(
        "raster_write_results.jsonl",
        (
            col("run", "run"),
            col("writer", "writer"),
            col("repeats", "repeats"),
            col("cold s (median)", "cold_s", 2),
            col("warm s (median)", "warm_s", 2),
            col("peak RSS GiB", "peak_rss_gib", 2),
            Column(
                "stored MiB per region",
                lambda row: _num((row.get("stored_bytes_per_region") or 0) / 2**20, 0),
            ),
        ),
        rows=_writer_medians,
    ),
    "bench-s3-swap": RecordTable(
        "s3_swap_results.jsonl",
        (
            col("when", "when"),
            col("objects", "objects"),
            col("connections", "connections"),
            col("one by one s", "serial_s", 1),
            col("batched s", "batched_s", 1),
            col("speed-up", "speedup", 1),
            col("server", "server"),
        ),
    ),
    "bench-scale": RecordTable(
        "scale_results.jsonl",
        (
            col("run", "run_label"),
            col("buildings × blocks", "config"),
            col("run s", "run.run_s", 1),
            col("tree anon peak MiB", "run.tree_peak_anon_mib", 0),
            *(_scale_step(step) for step in SCALE_STEPS),
        ),
        rows=_scale_runs,
        after="The full output of the runs, per step and check, is in "
        "[`bench/scale_results.txt`](bench/scale_results.txt).",
    ),
}


def bench_pyramid() -> str:
    name = "pyramid_results.jsonl"
    rows, before_after, estimates = [], [], []
    run = 0
    label = ""
    for r in records(name):
        step = r.get("step")
        if step is None:  # a run's header line: what the lines below it measured
            run += 1
            note = (r.get("note") or "").split(":")[0]
            label = (
                f"{run}"
                + (f" ({note})" if note else "")
                + (f", scratch {r['scratch']}" if r.get("scratch") else "")
            )
        elif step in ("real", "whole_graph", "levels", "topozarr"):
            rows.append(
                (
                    label,
                    step,
                    r.get("grid"),
                    r.get("threads"),
                    r.get("dask_workers"),
                    r.get("source_chunk_px"),
                    _num(r.get("seconds")),
                    _num(r.get("tree_peak_rss_gib"), 2),
                    r.get("objects"),
                )
            )
        elif step == "before_after":
            before_after.append(
                (
                    r.get("when"),
                    r.get("grid"),
                    " / ".join(str(v) for v in r.get("before_seconds") or []),
                    " / ".join(str(v) for v in r.get("after_seconds") or []),
                    " / ".join(str(v) for v in r.get("old_check_level0_read_s") or []),
                    " / ".join(str(v) for v in r.get("check_reads_s") or []),
                    r.get("note"),
                )
            )
        elif step == "conus_estimate":
            estimates.append(
                (
                    label,
                    r.get("source_chunk_px"),
                    _num(r.get("conus_hours"), 2),
                    _num(r.get("conus_peak_gib")),
                )
            )
    header = [
        "run",
        "writer",
        "grid (n × n regions)",
        "threads",
        "dask workers",
        "source chunk px",
        "seconds",
        "peak RSS GiB",
        "objects",
    ]
    return (
        table(header, rows)
        + "\n\nThe same store before and after issue 30 (alternating runs):\n\n"
        + table(
            [
                "when",
                "grid",
                "before s",
                "after s",
                "old check's level-0 read s",
                "check's reads now s",
                "note",
            ],
            before_after,
        )
        + "\n\nLinear fits to the CONUS grid, per run:\n\n"
        + table(["run", "source chunk px", "CONUS hours", "CONUS peak GiB"], estimates)
        + "\n\n"
        + source(name)
        + " The runs' own write-up: [`bench/pyramid_results.md`](bench/pyramid_results.md)."
    )


GENERATED: dict[str, Callable[[], str]] = {
    "cli": cli,
    "settings": settings,
    "assets": assets,
    "checks": checks,
    "jobs": jobs,
    "layout": layout,
    "profiles": profiles,
    "conus": conus,
    **RECORD_TABLES,
    "bench-pyramid": bench_pyramid,
}


def _checkout_first() -> None:
    """The checkout's packages (and ``bench``, a folder of the checkout, not an installed
    package) before any installed copy: the pages describe the code beside them."""
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))


def render(markdown: str) -> str:
    """``markdown`` with every marker replaced by its generated part (unknown names fail)."""
    _checkout_first()

    def replace(match: re.Match[str]) -> str:
        name = match.group(1)
        if name not in GENERATED:
            raise KeyError(f"unknown generated part {name!r}; known: {sorted(GENERATED)}")
        with warnings.catch_warnings():  # Dagster's deprecation notes are not the docs' business
            warnings.simplefilter("ignore", DeprecationWarning)
            return GENERATED[name]()

    return MARKER.sub(replace, markdown)


# ---------------------------------------------------------------------------------- MkDocs events


def on_config(config: Any) -> Any:
    _checkout_first()  # MkDocs restores sys.path after loading this module
    _definitions.cache_clear()  # each build (mkdocs serve rebuilds) reads the code anew
    return config


def on_page_markdown(markdown: str, page: Any, config: Any, files: Any) -> str:
    return render(markdown)


def on_files(files: Any, config: Any) -> Any:
    """The benchmark records, published with the site under ``bench/``."""
    from mkdocs.structure.files import File

    for path in sorted(BENCH.iterdir()):
        if path.suffix in RECORD_SUFFIXES:
            files.append(File.generated(config, f"bench/{path.name}", abs_src_path=str(path)))
    return files
