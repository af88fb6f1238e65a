"""Dagster's stale status of assets and region partitions as the UI reads it: GraphQL of a
webserver on the environment's instance. No public Python API exposes Dagster's resolver;
this is the interface the UI itself uses."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

from ocr_jobs.deploy.runner import instance_home, run_environment
from ocr_jobs.deploy.services import DagsterServices
from ocr_resources.settings import OcrSettings

ASSETS = """query ($keys: [AssetKeyInput!]) {
  assetNodes(assetKeys: $keys) { assetKey { path } staleStatus } }"""
PARTITIONS = """query ($key: AssetKeyInput!, $partitions: [String!]!) {
  assetNodeOrError(assetKey: $key) { ... on AssetNode {
    staleStatusByPartition(partitions: $partitions) } } }"""


class StaleStatus:
    """Questions to a running webserver about what Dagster calls stale."""

    def __init__(self, services: DagsterServices) -> None:
        self.services = services

    def stale_assets(self, keys: list[str]) -> set[str]:
        """Which of these (unpartitioned) assets Dagster calls stale."""
        data = self.services.graphql(ASSETS, {"keys": [{"path": [k]} for k in keys]})
        return {
            n["assetKey"]["path"][-1] for n in data["assetNodes"] if n["staleStatus"] == "STALE"
        }

    def stale_partitions(self, key: str, partitions: list[str]) -> set[str]:
        """Which of these partitions of ``key`` Dagster calls stale."""
        data = self.services.graphql(PARTITIONS, {"key": {"path": [key]}, "partitions": partitions})
        statuses = data["assetNodeOrError"]["staleStatusByPartition"]
        return {p for p, s in zip(partitions, statuses, strict=True) if s == "STALE"}


@contextlib.contextmanager
def stale_status(
    settings: OcrSettings, log: Path, extra_env: dict[str, str] | None = None
) -> Iterator[StaleStatus]:
    """A webserver (no daemon) on the environment's instance for the ``with`` block; its output
    in ``log``; ``extra_env`` added to its environment (e.g. a test fault)."""
    env = {**run_environment(settings, instance_home(settings)), **(extra_env or {})}
    with open(log, "a") as output, DagsterServices(env, False, output) as services:
        yield StaleStatus(services)
