"""Local pipeline tasks forked from a process that has imported TensorFlow once, not started afresh.

kfp.local's SubprocessRunner starts every task as `sh -ec SCRIPT SOURCE ARGS...`: a new interpreter
that writes the component's source to a file and runs kfp.dsl.executor_main on it. Each task that
trains, predicts, explains or registers then imports TensorFlow, about 4.6 s of CPU (of a demo's
276 CPU-seconds on 2 cores, about 10 such tasks). `forked_tasks()` starts one server process that
imports TensorFlow and Keras, runs no TensorFlow op, and forks a child per task; the child does
what the script does, in the same interpreter, with the caller's environment and folder at that
moment. A task that comes while the server is still importing waits for it (about 5 s on an idle
machine): a fresh interpreter would spend as long importing TensorFlow again, and in the tests' short
runs, tasks started afresh so took the longest ones (tune, train) off the server. The demo starts
the server before rendering its phantom (`task_server()`), so even its first tasks find it ready.
A command of another shape, and every task once the server is gone (or has not started within
READY_TIMEOUT_S), starts as kfp starts it. TensorFlow reads its own variables (TF_*, CUDA_*) when the
server imports it, at the run's start. The demo took 133 s instead of 171 s so (docs/pipeline.md).

The protocol is JSON lines: the caller writes {id, argv, env, cwd, stdout, stderr} to the server's
stdin, where argv is what follows `python` (`-m MODULE ARGS...` or `-c CODE ARGS...`); the server
answers {id, rc, cpu_s} on its stdout when that child exits (cpu_s: the child's user and system CPU
time, which the step's StepTime carries), after {"ready": true} once. A kfp task is
`-m kfp.dsl.executor_main --component_module_path FILE ARGS...` with stdout and stderr in one log,
which the caller prints as kfp prints a task's output. The tests run their self-killing commands
through `_Server.python` too (tests/conftest.py: python_forked). tests/test_task_fork.py checks
that a task runs forked, fails as it would alone, and starts as kfp starts it once the server is gone.
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import Future
from pathlib import Path

from kfp.dsl.component_factory import EXECUTOR_MODULE  # what kfp's task script runs

from histoxai.pipelines.local_scheduler import record_task_cpu

READY_TIMEOUT_S = 180  # a server not ready by then (a machine far overloaded) is passed over


class _Server:
    """The caller's side: one server process, requests from any thread, answers by id."""

    def __init__(self):
        self.proc = subprocess.Popen([sys.executable, "-m", "histoxai.pipelines.task_fork"],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.DEVNULL)
        self.lock = threading.Lock()
        self.waiting: dict[int, Future] = {}
        self.next_id, self.ready, self.gone = 0, False, False
        self.settled = threading.Event()  # set once the server is ready or gone
        self.deadline = time.monotonic() + READY_TIMEOUT_S  # passed over if not ready by then
        threading.Thread(target=self._answers, daemon=True, name="task-fork-answers").start()

    def _answers(self) -> None:
        for line in self.proc.stdout:
            message = json.loads(line)
            if message.get("ready"):
                self.ready = True
                self.settled.set()
                continue
            with self.lock:
                future = self.waiting.pop(message["id"])
            future.set_result((message["rc"], message.get("cpu_s")))
        with self.lock:  # the server is gone: what still waits failed
            self.gone = True
            for future in self.waiting.values():
                future.set_result((None, None))
            self.waiting.clear()
        self.settled.set()

    def python(self, argv: list[str], env: dict[str, str], stdout: Path, stderr: Path,
               cwd: Path | None = None) -> tuple[int, float | None] | None:
        """Run `python ARGV` (`-m MODULE ...` or `-c CODE ...`) forked, in `cwd` (this folder) with `env`,
        its output in the two files (one file when they are the same path): its exit code (negative: killed
        by that signal) and CPU seconds, or None when the server cannot take it."""
        if argv[:1] not in (["-m"], ["-c"]) or len(argv) < 2:
            raise ValueError(f"argv must start with -m MODULE or -c CODE, not {argv[:2]!r}")
        future: Future = Future()
        self.settled.wait(max(0.0, self.deadline - time.monotonic()))  # once, not anew for each task
        with self.lock:
            if not self.ready or self.gone:
                return None
            task_id, self.next_id = self.next_id, self.next_id + 1
            self.waiting[task_id] = future
            request = {"id": task_id, "argv": argv, "env": env, "cwd": str(cwd or os.getcwd()),
                       "stdout": str(stdout), "stderr": str(stderr)}
            try:
                self.proc.stdin.write(json.dumps(request).encode() + b"\n")
                self.proc.stdin.flush()
            except OSError:  # the server just ended: nothing has started, so the caller starts it itself
                del self.waiting[task_id]
                self.gone = True
                return None
        code, cpu_seconds = future.result()
        if code is None:  # the server died under it: say so where its errors go, and fail
            with open(stderr, "a") as errors:
                errors.write("the task's server process ended while it ran\n")
            return 1, None
        return code, cpu_seconds

    def run(self, source: str, args: list[str], env: dict[str, str]) -> int | None:
        """A kfp task's exit code, its output printed as kfp prints it; None when the server cannot take
        it (start the task as kfp does)."""
        folder = Path(tempfile.mkdtemp(prefix="histoxai-task-"))
        try:
            program, log = folder / "ephemeral_component.py", folder / "output.log"
            program.write_text(source)  # as kfp's script writes it before running the executor
            argv = ["-m", EXECUTOR_MODULE, "--component_module_path", str(program), *args]
            ran = self.python(argv, {**env, "_KFP_RUNTIME": "true"}, log, log)
            if ran is None:
                return None
            code, cpu_seconds = ran
            record_task_cpu(cpu_seconds)  # the caller's StepTime carries it (local_scheduler)
            print(log.read_text(errors="replace") if log.exists() else "", end="")
        finally:
            shutil.rmtree(folder, ignore_errors=True)
        print("\n")  # as kfp closes a task's output
        return code

    def close(self) -> None:
        self.proc.stdin.close()  # the server ends once its running children have
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


@contextlib.contextmanager
def task_server():
    """A server started now and closed at the end of the block: started before other work (the demo's
    phantom), its imports are done by the time the first tasks start, so they fork too."""
    server = _Server()
    try:
        yield server
    finally:
        server.close()


@contextlib.contextmanager
def forked_tasks(server: _Server | None = None):
    """Within this block kfp.local's SubprocessRunner runs Python component tasks forked from a
    server that has imported TensorFlow (module docstring): `server` (from task_server(), left open)
    or one of its own; yields the server (its `ready` says whether tasks fork yet)."""
    if server is None:
        with task_server() as own, forked_tasks(own):
            yield own
        return
    from kfp.local import subprocess_task_handler as handler

    original = handler.run_local_subprocess

    def run_local_subprocess(full_command, env_vars=None):
        if len(full_command) > 3 and full_command[:2] == ["sh", "-ec"] and EXECUTOR_MODULE in full_command[2]:
            code = server.run(full_command[3], list(full_command[4:]), {**os.environ, **(env_vars or {})})
            if code is not None:
                return code
        return original(full_command, env_vars)

    handler.run_local_subprocess = run_local_subprocess
    try:
        yield server
    finally:
        handler.run_local_subprocess = original


# --- the server process ----------------------------------------------------------------------------------

def _child(request: dict) -> None:
    """In the forked child: what `python ARGV` would do, then exit with its code."""
    import atexit
    import runpy
    import traceback

    code = 1
    try:
        outputs = {request["stdout"], request["stderr"]}
        opened = {path: os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600) for path in outputs}
        os.dup2(opened[request["stdout"]], 1)
        os.dup2(opened[request["stderr"]], 2)
        for descriptor in opened.values():
            os.close(descriptor)
        os.dup2(os.open(os.devnull, os.O_RDONLY), 0)  # not the server's request pipe
        os.environ.clear()
        os.environ.update(request["env"])
        tempfile.tempdir = None  # found again from the caller's TMPDIR, not the server's
        os.chdir(request["cwd"])
        flag, target, *args = request["argv"]
        try:
            if flag == "-m":
                sys.path[0] = os.getcwd()  # as `python -m` puts the current folder first
                sys.argv = [target, *args]  # runpy puts the module's path in argv[0]
                runpy.run_module(target, run_name="__main__", alter_sys=True)
            else:
                sys.path[0] = ""
                sys.argv = ["-c", *args]
                exec(compile(target, "<string>", "exec"), {"__name__": "__main__"})
            code = 0
        except SystemExit as exit_:
            code = exit_.code if isinstance(exit_.code, int) else (0 if exit_.code is None else 1)
            if not isinstance(exit_.code, int | None):
                print(exit_.code, file=sys.stderr)  # as the interpreter prints sys.exit("message")
        except BaseException:
            traceback.print_exc()
        atexit._run_exitfuncs()  # what the interpreter's exit would run (histoxai.dataset frees its reads)
    finally:  # whatever happens, the child never returns into the server's loop
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(Exception):
                stream.flush()
        os._exit(code)


def serve() -> None:
    """Import TensorFlow, then fork a child per request line on stdin until stdin closes."""
    answers = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(os.open(os.devnull, os.O_WRONLY), 1)  # nothing else printed reaches the answers

    from histoxai.console import import_tensorflow

    import_tensorflow()
    import kfp.dsl  # noqa: F401 (the executor's own imports, done once)

    answers.write(json.dumps({"ready": True}) + "\n")
    children: dict[int, int] = {}
    pending, open_ = b"", True
    while open_ or children:
        if open_ and select.select([0], [], [], 0.05)[0]:
            chunk = os.read(0, 1 << 20)
            open_ = bool(chunk)
            pending += chunk
            *lines, pending = pending.split(b"\n")
            for line in lines:
                request = json.loads(line)
                sys.stdout.flush()
                sys.stderr.flush()
                pid = os.fork()
                if pid == 0:
                    with contextlib.suppress(Exception):
                        answers.close()
                    _child(request)  # never returns
                children[pid] = request["id"]
        elif not open_:
            time.sleep(0.05)  # only children left: wait for them
        while children:
            pid, status, usage = os.wait4(-1, os.WNOHANG)
            if pid == 0:
                break
            code = os.waitstatus_to_exitcode(status)
            cpu = round(usage.ru_utime + usage.ru_stime, 2)  # a forked child's counters start at zero
            answers.write(json.dumps({"id": children.pop(pid), "rc": code, "cpu_s": cpu}) + "\n")


if __name__ == "__main__":
    serve()
