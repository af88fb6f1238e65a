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

from __future__ import annotations

import ast
import io
import json
import re
import sys
import tokenize
import warnings
from collections.abc import Callable, Iterable
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


def _definitions() -> Any:
    from ocr_jobs.definitions import build_definitions
    from ocr_resources.settings import load_settings

    return build_definitions(load_settings(ROOT / "envs" / "local.env"))


def _group_order(key: Any, graph: Any) -> tuple[int, str]:
    groups = ["inputs", "phase01_regions", "phase02_aggregation", "phase03_tiles"]
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


def bench_run() -> str:
    name = "run_results.jsonl"
    rows = []
    for r in records(name):
        stages = r.get("field_stages_s") or {}
        rows.append(
            (
                r.get("when"),
                r.get("size"),
                " × ".join(str(v) for v in r.get("window", [])),
                _num(get(r, "stages.field.wall_s"), 2),
                _num(get(r, "stages.field.cpu_s"), 1),
                _num(get(r, "stages.field.peak_rss_gib"), 2),
                " · ".join(f"{k} {v:.2f}" for k, v in stages.items()),
                get(r, "check.max_relative_error"),
                r.get("note"),
            )
        )
    header = [
        "when",
        "size",
        "window (px)",
        "field wall s",
        "CPU s",
        "peak RSS GiB",
        "field stages, s",
        "max rel. diff. from reference",
        "note",
    ]
    return table(header, rows) + "\n\n" + source(name)


def bench_region_path() -> str:
    name = "region_path_results.jsonl"
    rows = []
    for r in records(name):
        for run in r.get("runs", []):
            rows.append(
                (
                    r.get("when"),
                    r.get("chunking"),
                    r.get("size"),
                    r.get("region"),
                    run.get("mode"),
                    _num(run.get("wall_s")),
                    _num(run.get("before_run_s")),
                    _num(run.get("own_work_s")),
                    _num(run.get("peak_rss_gib") or run.get("tree_peak_rss_gib"), 2),
                    r.get("note"),
                )
            )
    header = [
        "when",
        "chunking",
        "size",
        "region",
        "run",
        "whole command s",
        "before the run s",
        "region's own work s",
        "peak RSS GiB",
        "note",
    ]
    return table(header, rows) + "\n\n" + source(name)


def bench_ui_path() -> str:
    name = "ui_path_results.jsonl"
    rows = []
    for r in records(name):
        rows.append(
            (
                r.get("when"),
                r.get("size"),
                len(r.get("regions", [])),
                get(r, "ui_backfill.runs"),
                _num(get(r, "deploy.wall_s")),
                _num(get(r, "ui_backfill.launch_to_last_region_s")),
                _num(get(r, "ui_backfill.wall_s")),
                _num(r.get("ui_over_deploy"), 2),
                r.get("note"),
            )
        )
    header = [
        "when",
        "size",
        "regions",
        "runs",
        "`ocr deploy` s",
        "UI: launch → last region s",
        "UI: launch → backfill done s",
        "UI / deploy",
        "note",
    ]
    return table(header, rows) + "\n\n" + source(name)


def bench_raster_tiles() -> str:
    name = "raster_tiles_results.jsonl"
    rows = []
    for r in records(name):
        rows.append(
            (
                r.get("date"),
                r.get("zooms"),
                get(r, "cold.tiles"),
                _num(r.get("server_start_seconds")),
                _num(get(r, "cold.median_ms")),
                _num(get(r, "cold.p95_ms")),
                _num(get(r, "warm.median_ms")),
                _num(get(r, "warm.p95_ms")),
                _num(get(r, "warm.max_ms")),
                r.get("note"),
            )
        )
    header = [
        "date",
        "zooms",
        "tiles",
        "server start s",
        "cold median ms",
        "cold p95 ms",
        "warm median ms",
        "warm p95 ms",
        "warm max ms",
        "note",
    ]
    return table(header, rows) + "\n\n" + source(name)


def bench_raster_write() -> str:
    name = "raster_write_results.jsonl"
    rows = []
    for r in records(name):
        if r.get("step") != "summary":
            continue
        for writer in ("shard", "icechunk"):
            m = get(r, f"median.{writer}") or {}
            rows.append(
                (
                    r.get("run"),
                    writer,
                    r.get("repeats"),
                    _num(m.get("cold_s"), 2),
                    _num(m.get("warm_s"), 2),
                    _num(m.get("peak_rss_gib"), 2),
                    _num((m.get("stored_bytes_per_region") or 0) / 2**20, 0),
                )
            )
    header = [
        "run",
        "writer",
        "repeats",
        "cold s (median)",
        "warm s (median)",
        "peak RSS GiB",
        "stored MiB per region",
    ]
    return table(header, rows) + "\n\n" + source(name)


def bench_s3_swap() -> str:
    name = "s3_swap_results.jsonl"
    rows = [
        (
            r.get("when"),
            r.get("objects"),
            r.get("connections"),
            _num(r.get("serial_s")),
            _num(r.get("batched_s")),
            _num(r.get("speedup")),
            r.get("server"),
        )
        for r in records(name)
    ]
    header = ["when", "objects", "connections", "one by one s", "batched s", "speed-up", "server"]
    return table(header, rows) + "\n\n" + source(name)


SCALE_STEPS = (
    "buildings_geoparquet",
    "region_risk_summary_stats",
    "regional_analysis_files",
    "regional_pmtiles",
    "building_centroid_pmtiles",
    "building_pmtiles",
)


def bench_scale() -> str:
    name = "scale_results.jsonl"
    rows = []
    for r in records(name):
        if "config" not in r:
            continue
        steps = get(r, "run.steps") or {}
        row = [
            (r.get("note") and r["note"].split(":")[0]) or "",
            r.get("config"),
            _num(get(r, "run.run_s")),
            _num(get(r, "run.tree_peak_anon_mib"), 0),
        ]
        for step in SCALE_STEPS:
            s = steps.get(step) or {}
            row.append(
                None
                if not s
                else f"{_num(s.get('wall_s'))} s / {_num(s.get('ours_anon_mib'), 0)} MiB"
            )
        rows.append(row)
    header = [
        "run",
        "buildings × blocks",
        "run s",
        "tree anon peak MiB",
        *(f"`{s}` wall / own anon peak" for s in SCALE_STEPS),
    ]
    return (
        table(header, rows)
        + "\n\n"
        + source(name)
        + (
            " The full output of the runs, per step and check, is in "
            "[`bench/scale_results.txt`](bench/scale_results.txt)."
        )
    )


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
    "bench-run": bench_run,
    "bench-region-path": bench_region_path,
    "bench-ui-path": bench_ui_path,
    "bench-raster-tiles": bench_raster_tiles,
    "bench-raster-write": bench_raster_write,
    "bench-s3-swap": bench_s3_swap,
    "bench-scale": bench_scale,
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
