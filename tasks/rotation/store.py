"""Where a rotated secret's current value lives: a Prefect Secret block, or a key of a
Kubernetes Secret in the environment's namespace (``opsflow.rotation`` says the format, with
an API key's id). Reading returns a ``StoredSecret`` (the value as a ``SecretValue``);
writing takes one. Neither logs, returns or raises a value."""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import kubernetes.client
from pydantic import SecretStr

from connectors.kubernetes import REQUEST_TIMEOUT, kube_api, kube_errors
from opsflow.errors import PermanentError, TransientError
from opsflow.inventory import KubernetesTarget, SecretStore
from opsflow.inventory.security import SecretKind
from opsflow.redaction import redact
from opsflow.rotation import (
    KEY_ID_ANNOTATION,
    ROTATED_AT_ANNOTATION,
    SecretValue,
    pack_api_key,
    unpack_api_key,
)
from tasks.kubernetes.rollout import MERGE_PATCH
from tasks.policy import api_task

FIX_KEY_ID = (
    "an api_key store needs the key's id next to the key: write the Prefect Secret block as "
    "<id>:<key>, or annotate the Kubernetes Secret with opsflow.io/key-id=<id> (see "
    "docs/runbooks/rotate-secret.md)"
)


@dataclass(frozen=True)
class StoredSecret:
    """A store's current value; ``key_id``: an API key's id (None for a password)."""

    value: SecretValue
    key_id: str | None = None


def _prefect_value(name: str) -> str:
    from prefect.blocks.system import Secret

    try:
        block = Secret.load(name, _sync=True)  # type: ignore[call-arg]
    except ValueError:
        raise PermanentError(
            f"Prefect Secret block {name!r} does not exist: there is no current value to "
            "rotate (fix: create it with the value in use, Blocks > Secret in the UI)"
        ) from None
    raw = block.value.get_secret_value()  # type: ignore[union-attr]
    if not isinstance(raw, str) or not raw:
        raise PermanentError(
            f"Prefect Secret block {name!r} holds {type(raw).__name__}, not a string (fix: "
            "store the value as a plain string)"
        )
    return raw


def _read_k8s(target: KubernetesTarget, name: str, key: str) -> tuple[str, str | None]:
    ns = target.namespace
    with kube_api(target) as api:
        core = kubernetes.client.CoreV1Api(api)
        with kube_errors(api, f"secret {ns}/{name}"):
            response: Any = core.read_namespaced_secret(
                name, ns, _preload_content=False, _request_timeout=REQUEST_TIMEOUT
            )
            secret: dict[str, Any] = json.loads(response.data)
    data = secret.get("data") or {}
    if key not in data:
        raise PermanentError(
            f"Kubernetes Secret {ns}/{name} has no key {key!r} (its keys: "
            f"{', '.join(sorted(data)) or 'none'}; fix: name the key the consumers read)"
        )
    try:
        value = base64.b64decode(data[key], validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        raise PermanentError(
            f"Kubernetes Secret {ns}/{name} key {key!r} is not UTF-8 text (fix: rotation "
            "handles text values only)"
        ) from None
    annotations = (secret.get("metadata") or {}).get("annotations") or {}
    return value, annotations.get(KEY_ID_ANNOTATION)


@api_task("read_secret_store", timeout_seconds=120)
def read_secret_store(
    store: SecretStore, kind: SecretKind, kubernetes: KubernetesTarget | None = None
) -> StoredSecret:
    """The current value (and, for an ``api_key``, its id: no id is a ``PermanentError``
    before anything changes). The value is registered for redaction."""
    if store.prefect_secret is not None:
        value = SecretValue(_prefect_value(store.prefect_secret))
        key_id, key = unpack_api_key(value) if kind == "api_key" else (None, value)
    else:
        if kubernetes is None:
            raise PermanentError(f"{store.describe()}: the environment has no kubernetes")
        raw, key_id = _read_k8s(kubernetes, str(store.kubernetes_secret), str(store.key))
        if not raw:
            raise PermanentError(f"{store.describe()} is empty: there is no value to rotate")
        key = SecretValue(raw)
    if kind == "api_key" and not key_id:
        raise PermanentError(f"{store.describe()} holds no key id (fix: {FIX_KEY_ID})")
    return StoredSecret(key, key_id if kind == "api_key" else None)


def _save_prefect(name: str, value: SecretValue) -> None:
    from prefect.blocks.system import Secret

    try:
        Secret(value=SecretStr(value.reveal())).save(name, overwrite=True, _sync=True)  # type: ignore[call-arg]
    except Exception as exc:  # noqa: BLE001 - Prefect's client errors, classified here
        raise TransientError(
            f"cannot save Prefect Secret block {name!r}: {redact(str(exc))} (fix: check that "
            "the Prefect API is reachable)"
        ) from None


def _patch_k8s(
    target: KubernetesTarget, name: str, key: str, value: SecretValue, key_id: str | None
) -> None:
    ns = target.namespace
    stamp = datetime.now(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")
    annotations = {ROTATED_AT_ANNOTATION: stamp}
    if key_id is not None:
        annotations[KEY_ID_ANNOTATION] = key_id
    encoded = base64.b64encode(value.reveal().encode()).decode()
    body = {"metadata": {"annotations": annotations}, "data": {key: encoded}}
    with kube_api(target) as api:
        core = kubernetes.client.CoreV1Api(api)
        with kube_errors(api, f"update secret {ns}/{name}"):
            core.patch_namespaced_secret(
                name,
                ns,
                body,
                _content_type=MERGE_PATCH,
                _preload_content=False,
                _request_timeout=REQUEST_TIMEOUT,
            )


@api_task("write_secret_store", timeout_seconds=120)
def write_secret_store(
    store: SecretStore,
    kind: SecretKind,
    value: SecretValue,
    key_id: str | None = None,
    kubernetes: KubernetesTarget | None = None,
) -> str:
    """Store ``value`` (an ``api_key`` with its ``key_id``): the Prefect Secret block is
    overwritten; the Kubernetes Secret's ``data[key]`` and its annotations
    ``opsflow.io/rotated-at`` (and ``opsflow.io/key-id``) are patched. Idempotent."""
    if kind == "api_key" and not key_id:
        raise PermanentError(f"{store.describe()}: an API key is stored with its id")
    if store.prefect_secret is not None:
        packed = pack_api_key(str(key_id), value) if kind == "api_key" else value
        _save_prefect(store.prefect_secret, packed)
    else:
        if kubernetes is None:
            raise PermanentError(f"{store.describe()}: the environment has no kubernetes")
        _patch_k8s(kubernetes, str(store.kubernetes_secret), str(store.key), value, key_id)
    return f"{store.describe()} updated"
