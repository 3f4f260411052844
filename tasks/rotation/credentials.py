"""One rotated secret's credential and consumers, whatever its kind: plain functions over the
rotation tasks (the flow records each call as a step), as ``tasks.release`` is for deploys.

``Credential`` dispatches on the kind: ``check`` (log in with a value), ``create`` (the new
value valid, the old still valid where the system allows it), ``revoke_old``, and for a
rollback ``put_back`` (the old valid again) and ``retire_new`` (the new no longer valid).
``Consumers`` rolls Docker services (recreated with the env var set to the value, the same
image) and Kubernetes deployments (a rolling restart: they read the Kubernetes Secret)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta

from opsflow.inventory import (
    Database,
    DockerConsumer,
    DockerService,
    Environment,
    RedisTarget,
    RotatedSecret,
)
from opsflow.rotation import SecretValue, generate_value
from tasks.docker.deploy import (
    check_image_present,
    read_container_image,
    remove_previous_container,
    replace_container,
    restore_previous_container,
    wait_container_healthy,
)
from tasks.kubernetes.replicas import restart_deployment
from tasks.kubernetes.rollout import wait_for_rollout
from tasks.rotation.api_key import check_api_key, create_api_key, revoke_api_key
from tasks.rotation.postgres import check_postgres_login, set_postgres_password
from tasks.rotation.redis import add_redis_password, check_redis_login, remove_redis_password
from tasks.rotation.store import StoredSecret

HEALTH_TIMEOUT = timedelta(minutes=2)
ROLLOUT_TIMEOUT = timedelta(minutes=10)


@dataclass(frozen=True)
class Created:
    value: SecretValue
    key_id: str | None
    summary: str


@dataclass(frozen=True)
class Credential:
    """The credential of ``secret`` (entry ``index`` of environment ``env_name``)."""

    env_name: str
    env: Environment
    index: int
    secret: RotatedSecret

    @property
    def field(self) -> str:
        return f"environments.{self.env_name}.secrets[{self.index}]"

    def _db(self) -> tuple[Database, str]:
        i, db = next(
            (i, d) for i, d in enumerate(self.env.databases) if d.name == self.secret.admin
        )
        return db, f"environments.{self.env_name}.databases[{i}]"

    def _redis(self) -> tuple[RedisTarget, str]:
        i, r = next((i, r) for i, r in enumerate(self.env.redis) if r.name == self.secret.admin)
        return r, f"environments.{self.env_name}.redis[{i}]"

    def new_value(self) -> SecretValue | None:
        """A generated password (None for an API key: the application makes it)."""
        if self.secret.kind == "api_key":
            return None
        return generate_value(self.secret.length)

    def check(self, value: SecretValue) -> str:
        """Log in with ``value`` (PermanentError when refused)."""
        s = self.secret
        if s.kind == "postgres_role":
            return str(check_postgres_login(*self._db(), str(s.role), value))
        if s.kind == "redis_acl":
            return str(check_redis_login(*self._redis(), str(s.role), value))
        assert s.api is not None
        return str(check_api_key(s.api, value))

    def create(self, value: SecretValue | None) -> Created:
        """Make the new credential valid: ``value`` (a password) or a new API key."""
        s = self.secret
        if s.kind == "postgres_role":
            assert value is not None
            return Created(value, None, set_postgres_password(*self._db(), str(s.role), value))
        if s.kind == "redis_acl":
            assert value is not None
            return Created(value, None, add_redis_password(*self._redis(), str(s.role), value))
        assert s.api is not None
        made = create_api_key(s.api)
        return Created(made.key, made.key_id, f"API key {made.key_id} created")

    def revoke_old(self, old: StoredSecret) -> str:
        s = self.secret
        if s.kind == "postgres_role":
            return (
                "nothing to revoke: ALTER ROLE replaced the old password when the new one "
                "was set (PostgreSQL keeps one password per role)"
            )
        if s.kind == "redis_acl":
            return str(remove_redis_password(*self._redis(), str(s.role), old.value))
        assert s.api is not None and old.key_id is not None
        return str(revoke_api_key(s.api, old.key_id))

    def put_back(self, old: StoredSecret) -> str | None:
        """Rollback: the old value valid again (PostgreSQL only: elsewhere it never stopped
        being valid). None when there is nothing to do."""
        if self.secret.kind != "postgres_role":
            return None
        return str(set_postgres_password(*self._db(), str(self.secret.role), old.value))

    def retire_new(self, new: Created | None, value: SecretValue | None) -> str | None:
        """Rollback: the new credential no longer valid (Redis: its password removed; API:
        the new key revoked). PostgreSQL: ``put_back`` replaced it already."""
        s = self.secret
        if s.kind == "redis_acl" and value is not None:
            return str(remove_redis_password(*self._redis(), str(s.role), value))
        if s.kind == "api_key" and new is not None and new.key_id is not None:
            assert s.api is not None
            return str(revoke_api_key(s.api, new.key_id))
        if s.kind == "postgres_role":
            return "nothing more: restore_credential replaced the new password with the old one"
        return None


@dataclass(frozen=True)
class Consumers:
    """The consumers of a secret in environment ``env``."""

    env: Environment
    secret: RotatedSecret

    @property
    def health_timeout(self) -> float:
        deploy = self.env.deploy
        return (deploy.health_timeout if deploy else HEALTH_TIMEOUT).total_seconds()

    @property
    def rollout_timeout(self) -> float:
        deploy = self.env.deploy
        return (deploy.rollout_timeout if deploy else ROLLOUT_TIMEOUT).total_seconds()

    def service(self, consumer: DockerConsumer) -> DockerService:
        assert self.env.docker is not None
        return next(s for s in self.env.docker.services if s.name == consumer.service)

    def roll_docker(
        self,
        consumer: DockerConsumer,
        value: SecretValue,
        deploy_id: str,
        rolled: list[DockerConsumer],
    ) -> str:
        """Recreate the service's container from the image it runs (by id when its tag
        moved since) with ``consumer.env`` = ``value`` (then it joins ``rolled``: a rollback
        puts the replaced one back); wait until it is healthy."""
        assert self.env.docker is not None
        target, service = self.env.docker, self.service(consumer)
        now = read_container_image(target, service)
        image = now.image
        if check_image_present(target, image) != now.image_id:
            image = now.image_id  # the tag points elsewhere now: keep what runs
        replace_container(target, service, image, deploy_id, {consumer.env: value})
        rolled.append(consumer)
        seconds = wait_container_healthy(target, service, timeout_seconds=self.health_timeout)
        return (
            f"container {service.container} recreated with {consumer.env} set, healthy after "
            f"{seconds:.1f} s"
        )

    def check_docker(self, consumer: DockerConsumer) -> str:
        assert self.env.docker is not None
        service = self.service(consumer)
        seconds = wait_container_healthy(
            self.env.docker, service, timeout_seconds=self.health_timeout
        )
        return f"container {service.container} healthy ({seconds:.1f} s)"

    def roll_back_docker(self, consumer: DockerConsumer) -> str:
        """The container it replaced back (its exact configuration: the old value)."""
        assert self.env.docker is not None
        service = self.service(consumer)
        restore_previous_container(self.env.docker, service)
        seconds = wait_container_healthy(
            self.env.docker, service, timeout_seconds=self.health_timeout
        )
        return f"previous container {service.container} back, healthy after {seconds:.1f} s"

    def remove_previous(self, consumer: DockerConsumer) -> str:
        assert self.env.docker is not None
        service = self.service(consumer)
        removed = remove_previous_container(self.env.docker, service)
        return f"{service.container}: {'previous container removed' if removed else 'none kept'}"

    def restart(self, deployment: str) -> str:
        assert self.env.kubernetes is not None
        status = restart_deployment(self.env.kubernetes, deployment, self.rollout_timeout)
        return f"deployment {deployment} restarted: {status.available} replica(s) available"

    def check_deployment(self, deployment: str) -> str:
        assert self.env.kubernetes is not None
        status = wait_for_rollout(
            self.env.kubernetes, deployment, timeout_seconds=self.rollout_timeout
        )
        return f"deployment {deployment}: {status.available}/{status.replicas} available"
