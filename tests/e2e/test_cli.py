"""The `ocr` command line: selection reports and refusals."""

from typer.testing import CliRunner

from ocr_jobs.cli import app

runner = CliRunner()


def _env(tmp_path, root):
    env = tmp_path / "test.env"
    env.write_text(f"OCR_ENVIRONMENT=local\nOCR_STORAGE_ROOT={root}\n")
    return str(env)


def test_regions_select_reports_and_refuses_invalid(tmp_path, sample_root):
    ok = runner.invoke(
        app, ["regions", "select", "y0_x0-x2", "--env-file", _env(tmp_path, sample_root)]
    )
    assert ok.exit_code == 0, ok.output
    assert "provided: 3  valid: 3  invalid: 0" in ok.output
    bad = runner.invoke(
        app, ["regions", "select", "y4_x4-x5", "--env-file", _env(tmp_path, sample_root)]
    )
    assert bad.exit_code == 2
    assert "y4_x4" in bad.output and "y4_x5" in bad.output
    malformed = runner.invoke(
        app, ["regions", "select", "../y1_x1", "--env-file", _env(tmp_path, sample_root)]
    )
    assert malformed.exit_code == 2 and "malformed" in malformed.output


def test_deploy_needs_exactly_one_kind_of_selection(tmp_path, sample_root):
    env = _env(tmp_path, sample_root)
    both = runner.invoke(
        app, ["deploy", "--env-file", env, "--all-region-ids", "--region-id", "y0_x0"]
    )
    assert both.exit_code == 2 and "give --region-id or --recompute" in both.output
    neither = runner.invoke(app, ["deploy", "--env-file", env])
    assert neither.exit_code == 2
    other_risk = runner.invoke(
        app, ["deploy", "--env-file", env, "--all-region-ids", "--risk-type", "flood"]
    )
    assert other_risk.exit_code == 2 and "not supported" in other_risk.output
    empty = runner.invoke(app, ["deploy", "--env-file", env, "--region-id", "y9_x9", "--dry-run"])
    assert empty.exit_code == 2 and "y9_x9" in empty.output


def test_regions_refresh_check_passes_on_the_sample(tmp_path, sample_root):
    result = runner.invoke(
        app, ["regions", "refresh", "--check", "--env-file", _env(tmp_path, sample_root)]
    )
    assert result.exit_code == 0, result.output
    assert "20 valid of 30 regions" in result.output


def test_the_optional_assets_table_gives_the_deploy_command_its_flags():
    """One flag per row of OPTIONAL_ASSETS, listed by --help; the command gets the keys of
    those given, in the table's order, and its own options as before."""
    import typer

    from ocr_assets.constants import OPTIONAL_ASSETS
    from ocr_jobs.cli.deploy import with_optional_asset_flags

    calls = []

    @with_optional_asset_flags
    def command(region: str = "", optional_assets: tuple[str, ...] = ()) -> None:
        calls.append((region, optional_assets))

    one = typer.Typer()
    one.command()(command)
    last = OPTIONAL_ASSETS[-1]
    assert runner.invoke(one, ["--region", "y1_x1", last.flag]).exit_code == 0
    everything = [o.flag for o in reversed(OPTIONAL_ASSETS)]
    assert runner.invoke(one, everything).exit_code == 0
    assert runner.invoke(one, []).exit_code == 0
    assert calls == [
        ("y1_x1", (last.key,)),
        ("", tuple(o.key for o in OPTIONAL_ASSETS)),
        ("", ()),
    ]
    shown = runner.invoke(app, ["deploy", "--help"], env={"COLUMNS": "200"}).output
    assert all(o.flag in shown for o in OPTIONAL_ASSETS), shown
