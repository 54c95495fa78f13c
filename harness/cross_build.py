"""A process that builds configurations for GPU architectures this machine does not have.

`python -m harness.cross_build` speaks the harness's JSON-lines protocol (harness/benchmark.py
`serve`, started and pinged by harness/children.py `start_children`): one {"op": "build", "job":
{"kernel", "dims", "dtype", "arch", "config"}} a line in, one {"build": Build's fields} or
{"error": "Type: first line"} out. It runs without TRITON_INTERPRET (the harness's rule for any
device but "cpu"), which the tests need, and in its own process group, so a ptxas that hangs
dies with it. bench/constraint_check.py and tests/test_cross_compile.py drive it with `Builder`.
"""
from __future__ import annotations

import json
import tempfile
from dataclasses import asdict
from typing import Any

from harness.cross_compile import Build

DEVICE = "offline"  # no device is opened: builds name their architecture
_JOB_FIELDS = ("kernel", "dims", "dtype", "arch", "config")


def _job(msg: dict) -> dict[str, Any]:
    job = msg.get("job")
    if not isinstance(job, dict) or any(f not in job for f in _JOB_FIELDS):
        raise ValueError(f"a build job has the fields {', '.join(_JOB_FIELDS)}")
    return job


def build_one(job: dict[str, Any]) -> dict[str, Any]:
    from harness.cross_compile import cross_compile
    from search_spaces import registry
    from devices.targets import target_for

    try:
        spec, target = registry.get(job["kernel"]), target_for(job["arch"])
        _, build = cross_compile(spec, job["config"], spec.make_key(job["dims"], job["dtype"]), target)
        return {"build": asdict(build)}
    except Exception as exc:  # what a launch on that GPU would raise at compile time
        text = str(exc).strip().splitlines()
        return {"error": f"{type(exc).__name__}: {text[0] if text else ''}"[:300]}


class Builder:
    """One build process: `build(job, timeout_s)` returns ("ok", Build), ("error", why) or
    ("timeout", why). A process that died or timed out is replaced before the next build."""

    def __init__(self, cache_dir: str | None = None) -> None:
        self._env = {"TRITON_CACHE_DIR": cache_dir or tempfile.mkdtemp(prefix="cross-build-")}
        self._child = self._start()

    def _start(self):
        from harness.children import start_children

        (child,) = start_children(DEVICE, "harness.cross_build", 1, env=self._env)
        return child

    @property
    def proc(self):
        return self._child.proc

    def build(self, job: dict[str, Any], timeout_s: float) -> tuple[str, Build | str]:
        if self._child.proc.poll() is not None:
            self._child = self._start()
        try:
            self._child.send({"op": "build", "job": job})
        except (BrokenPipeError, OSError):
            return "error", self._child.death()
        line = self._child.read_line(timeout_s)
        if line is None:
            self._child.kill()
            return "timeout", f"no build within {timeout_s:g} s"
        if line == b"":
            return "error", self._child.death()
        answer = json.loads(line)
        if "error" in answer:
            return "error", answer["error"]
        fields = answer["build"]
        return "ok", Build(**{**fields, "mma": tuple(fields["mma"])})

    def close(self) -> None:
        self._child.close()


def main() -> None:
    from harness.benchmark import serve
    serve(build_one, lambda why: {"error": why}, parse=_job)


if __name__ == "__main__":
    main()
