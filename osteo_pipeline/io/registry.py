"""MLflow Model Registry access: versions, aliases and tags. Stages are aliases (MLflow 3)."""

from __future__ import annotations

import os
import re
import socket
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import RESOURCE_ALREADY_EXISTS, RESOURCE_DOES_NOT_EXIST, ErrorCode
from mlflow.tracking import MlflowClient

from osteo_pipeline.errors import OsteoError

STAGING, PRODUCTION, PREVIOUS = "staging", "production", "previous"
REPLACED_TAG = "osteo.replaced_version"  # set on a version when it becomes production
ROLLED_BACK_TAG = "osteo.rolled_back"  # set on a version production was rolled back from
LOCK_INFIX = ".lock."  # a registry lock is the registered model <name>.lock.<purpose>


class RegistryError(OsteoError, RuntimeError):
    """A registry operation cannot be done (missing model, version or alias)."""


def _missing(exc: MlflowException) -> bool:
    return exc.error_code == ErrorCode.Name(RESOURCE_DOES_NOT_EXIST)


def _exists(exc: MlflowException) -> bool:
    return exc.error_code == ErrorCode.Name(RESOURCE_ALREADY_EXISTS)


class RegistryBusyError(RegistryError):
    """Another process holds the registry lock longer than we were willing to wait."""


def model_names(client: MlflowClient) -> list[str]:
    """Every registered model's name, sorted, leaving out registry locks (``Registry.lock``)."""
    names, token = [], None
    while True:
        page = client.search_registered_models(page_token=token)
        names += [model.name for model in page if LOCK_INFIX not in model.name]
        token = page.token
        if not token:
            return sorted(names)


def registered_version(model_uri: str, client: MlflowClient) -> tuple[str, str] | None:
    """The (name, version) a ``models:/NAME/VERSION`` or ``models:/NAME@ALIAS`` URI names now;
    ``None`` for any other URI (a run's model, a logged model's id)."""
    found = re.fullmatch(r"models:/([^/@]+)(?:/(\d+)|@([^/@]+))", model_uri)
    if found is None:
        return None
    name, version, alias = found.groups()
    if alias is None:
        return name, version
    aliased = Registry(name, client).aliases().get(alias)
    if aliased is None:
        raise RegistryError(f"model {name!r} has no {alias!r} alias ({model_uri})")
    return name, aliased


@dataclass
class Registry:
    name: str
    client: MlflowClient

    def ensure_model(self) -> None:
        try:
            self.client.get_registered_model(self.name)
        except MlflowException as exc:
            if not _missing(exc):
                raise
            self.client.create_registered_model(
                self.name,
                description="Knee X-ray osteoporosis classifier (ResNet-50 transfer learning)",
            )

    def create_version(self, model_uri: str, run_id: str, tags: dict[str, str]) -> ModelVersion:
        """A new version of the logged model ``models:/m-...`` (linked by model id, which a
        remote tracking server requires)."""
        self.ensure_model()
        model_id = (
            model_uri.removeprefix("models:/") if model_uri.startswith("models:/m-") else None
        )
        return self.client.create_model_version(
            self.name, model_uri, run_id=run_id, tags=tags, model_id=model_id
        )

    def version_of_run(self, run_id: str) -> ModelVersion | None:
        """The version already registered from ``run_id`` (the lowest, if several), or ``None``:
        what makes registering a run idempotent."""
        try:
            found = self.client.search_model_versions(
                f"name = '{self.name}' and run_id = '{run_id}'"
            )
        except MlflowException as exc:
            if _missing(exc):
                return None
            raise
        return min(found, key=lambda v: int(v.version)) if found else None

    @contextmanager
    def lock(
        self, purpose: str, wait_s: float = 60.0, stale_after_s: float = 300.0
    ) -> Iterator[None]:
        """Mutual exclusion across processes and machines for a short registry update (an alias
        compare-and-set). The registry has no lock of its own, but creating a registered model is
        atomic in MLflow's SQL stores (a unique name) and so through a tracking server: the lock
        is the model ``<name>.lock.<purpose>``, created to take it and deleted to release it, its
        description naming its holder with a token of its own. A lock seen held by the same token
        for ``stale_after_s`` of our own waiting was left by a killed process and is broken
        (measured on this machine's clock, so clock skew does not matter). Not for MLflow's file
        store, whose model creation is not atomic."""
        name = f"{self.name}{LOCK_INFIX}{purpose}"
        token = f"{socket.gethostname()} pid {os.getpid()} token {uuid.uuid4().hex}"
        deadline = time.monotonic() + wait_s
        seen: tuple[str, float] | None = None  # (holder, when we first saw it)
        while True:
            try:
                self.client.create_registered_model(
                    name, description=f"registry lock held by {token}; deleted when its update ends"
                )
                break
            except MlflowException as exc:
                if not _exists(exc):
                    raise
            holder = self._lock_holder(name)
            if holder is None:
                continue  # released between our two calls
            if seen is None or seen[0] != holder:
                seen = (holder, time.monotonic())
            elif time.monotonic() - seen[1] > stale_after_s:
                self._release(name, holder)  # its holder died mid-update
                continue
            if time.monotonic() > deadline:
                raise RegistryBusyError(
                    f"registry lock {name!r} is held ({holder}); try again later"
                )
            time.sleep(0.2)
        try:
            yield
        finally:
            self._release(name, token)

    def _lock_holder(self, name: str) -> str | None:
        try:
            return self.client.get_registered_model(name).description or ""
        except MlflowException as exc:
            if _missing(exc):
                return None
            raise

    def _release(self, name: str, holder: str) -> None:
        """Delete the lock if ``holder`` still holds it (never another holder's)."""
        current = self._lock_holder(name)
        if current is None or holder not in current:
            return
        try:
            self.client.delete_registered_model(name)
        except MlflowException as exc:
            if not _missing(exc):
                raise

    def version(self, version: str | int) -> ModelVersion:
        try:
            return self.client.get_model_version(self.name, str(version))
        except MlflowException as exc:
            if _missing(exc):
                raise RegistryError(f"model {self.name!r} has no version {version}") from exc
            raise

    def by_alias(self, alias: str) -> ModelVersion | None:
        # Looked up through the alias table: stores disagree on the error code of a missing alias.
        version = self.aliases().get(alias)
        return None if version is None else self.version(version)

    def set_alias(self, alias: str, version: str | int) -> None:
        self.client.set_registered_model_alias(self.name, alias, str(version))

    def drop_alias(self, alias: str) -> None:
        try:
            self.client.delete_registered_model_alias(self.name, alias)
        except MlflowException as exc:
            if not _missing(exc):
                raise

    def tag(self, version: str | int, tags: dict[str, str]) -> None:
        for key, value in tags.items():
            self.client.set_model_version_tag(self.name, str(version), key, value)

    def versions(self) -> list[ModelVersion]:
        try:
            found = self.client.search_model_versions(f"name = '{self.name}'")
        except MlflowException as exc:
            if _missing(exc):
                return []
            raise
        return sorted(found, key=lambda v: int(v.version))

    def aliases(self) -> dict[str, str]:
        """alias -> version."""
        try:
            return {
                alias: str(v)
                for alias, v in self.client.get_registered_model(self.name).aliases.items()
            }
        except MlflowException as exc:
            if _missing(exc):
                return {}
            raise

    def uri(self, version: str | int) -> str:
        return f"models:/{self.name}/{version}"
