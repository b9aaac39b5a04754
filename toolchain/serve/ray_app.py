"""The same OIP v2 app as a Ray Serve application: replicas, autoscaling, Ray's HTTP proxy in front.

Each replica builds its own `Repository` (verifying every package on its node, so package paths must
exist there) and serves `create_app` on it; Ray Serve routes ``/`` to the replicas. Needs the ``ray``
extra (``pip install 'ray[serve]'``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from toolchain.core.errors import ToolchainError
from toolchain.serve.repository import Repository, ServeOptions

__all__ = ["build_application", "deploy"]


class _Replica:
    """One Ray Serve replica: a verified repository and the app over it."""

    def __init__(self, packages: list[str], root: str | None, options: ServeOptions, token: str) -> None:
        self.token = token
        self.repository = Repository(
            packages=[Path(p) for p in packages], root=Path(root) if root else None, options=options
        )
        self.repository.start(wait=True)

    def __serve_build_asgi_app__(self) -> Any:
        from toolchain.serve.app import create_app

        return create_app(self.repository, token=self.token)

    def check_health(self) -> None:
        """Ray Serve's health check: a replica whose models are not all ready is restarted."""
        if not self.repository.ready():
            raise ToolchainError("not every model of this replica serves a verified version")


def build_application(
    packages: list[Path],
    *,
    root: Path | None = None,
    options: ServeOptions | None = None,
    token: str = "",
    replicas: int = 1,
    max_replicas: int = 0,
    name: str = "toolchain",
) -> Any:
    """A bound Ray Serve application; autoscaling between `replicas` and `max_replicas` when larger."""
    try:
        from ray import serve
    except ImportError as e:
        raise ToolchainError("--ray needs Ray Serve: pip install 'toolchain[ray]' (or 'ray[serve]')") from e
    scaling: dict[str, Any] = {"num_replicas": replicas}
    if max_replicas > replicas:
        scaling = {
            "autoscaling_config": {
                "min_replicas": replicas,
                "max_replicas": max_replicas,
                "target_ongoing_requests": 32,
            }
        }
    deployment = serve.deployment(name=name, **scaling)(serve.ingress()(_Replica))
    return deployment.bind([str(p) for p in packages], str(root) if root else None, options or ServeOptions(), token)


def deploy(
    packages: list[Path],
    *,
    root: Path | None = None,
    options: ServeOptions | None = None,
    host: str = "127.0.0.1",
    port: int = 8000,
    token: str = "",
    replicas: int = 1,
    max_replicas: int = 0,
) -> None:
    """Start (or join) a local Ray instance and run the application until interrupted."""
    application = build_application(
        packages, root=root, options=options, token=token, replicas=replicas, max_replicas=max_replicas
    )
    import ray
    from ray import serve

    ray.init(ignore_reinit_error=True)
    serve.start(http_options={"host": host, "port": port})
    serve.run(application, name="toolchain", route_prefix="/", blocking=True)
