"""TrackedContainer: run one command in an image and fail loudly (after jupyter/docker-stacks).

Every container it starts is removed at the end of the test, even when the
test fails half-way; `run_and_wait` fails on a non-zero exit and returns the
output so the test can assert on what a user would see.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Any

import docker


@dataclass
class Result:
    exit_code: int
    stdout: str
    stderr: str


@dataclass
class TrackedContainer:
    client: docker.DockerClient
    image: str
    default_kwargs: dict[str, Any] = field(default_factory=dict)
    _containers: list[Any] = field(default_factory=list)

    def start(self, command: list[str] | str, **kwargs: Any) -> Any:
        """Start `command` in the background; `wait` collects it."""
        opts = {**self.default_kwargs, **kwargs}
        container = self.client.containers.run(self.image, command, detach=True, **opts)
        self._containers.append(container)
        return container

    @staticmethod
    def wait(container: Any, timeout: int = 300) -> Result:
        status = container.wait(timeout=timeout)
        return Result(
            int(status["StatusCode"]),
            container.logs(stdout=True, stderr=False).decode("utf-8", "replace"),
            container.logs(stdout=False, stderr=True).decode("utf-8", "replace"),
        )

    def run(self, command: list[str] | str, timeout: int = 300, **kwargs: Any) -> Result:
        """Run `command` to completion (no exit-code check)."""
        return self.wait(self.start(command, **kwargs), timeout=timeout)

    def run_and_wait(self, command: list[str] | str, timeout: int = 300, **kwargs: Any) -> Result:
        """Run `command` and fail the test, with its output, unless it exits 0."""
        result = self.run(command, timeout=timeout, **kwargs)
        assert result.exit_code == 0, (
            f"{command!r} in {self.image} exited {result.exit_code}\n"
            f"--- stdout\n{result.stdout[-3000:]}\n--- stderr\n{result.stderr[-3000:]}"
        )
        return result

    def remove(self) -> None:
        for container in self._containers:
            with contextlib.suppress(docker.errors.NotFound):
                container.remove(force=True)
        self._containers.clear()
