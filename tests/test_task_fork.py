"""Local tasks forked from a server that has imported TensorFlow (pipelines/task_fork.py), on kfp.local."""

import time
from types import SimpleNamespace

import pytest
from kfp import dsl, local

from histoxai.pipelines.local_scheduler import concurrent_tasks
from histoxai.pipelines.task_fork import forked_tasks, task_server


@dsl.component(base_image="python:3.11", install_kfp_package=False)
def started_with_tensorflow(word: str) -> str:
    """Whether TensorFlow was already imported when the task began (only a forked task has it)."""
    import os
    import sys
    import time

    print(f"task says {word}")
    if word == "fail":
        raise ValueError("this task fails on purpose")
    if word == "spin":  # half a second of CPU, which the task's StepTime must show
        while time.process_time() < 0.5:
            pass
    return f"{'tensorflow' in sys.modules} {os.environ.get('HISTOXAI_TASK_FORK_TEST', '')}"


@dsl.pipeline(name="forked")
def forked(word: str) -> str:
    return started_with_tensorflow(word=word).output


def _wait(condition, what: str) -> None:
    deadline = time.monotonic() + 120
    while not condition():
        assert time.monotonic() < deadline, f"waited 120 s for {what}"
        time.sleep(0.1)


@pytest.fixture(scope="module")
def pipeline_root(tmp_path_factory):
    local.init(runner=local.SubprocessRunner(use_venv=False),
               pipeline_root=str(tmp_path_factory.mktemp("root")), raise_on_error=True)


def test_tasks_start_as_kfp_starts_them_once_the_server_is_gone(pipeline_root):
    from kfp.local import subprocess_task_handler as handler

    kfps_own = handler.run_local_subprocess  # first in this file: no other block is open yet
    steps = []
    with concurrent_tasks(step_times=steps), forked_tasks() as started:
        assert handler.run_local_subprocess is not kfps_own
        started.proc.kill()  # before it has imported TensorFlow: gone is gone, and that import is 5 CPU-s
        _wait(lambda: started.gone, "the task server's end to be noticed")
        assert forked(word="alone").output == "False "  # a fresh interpreter, and it still ran
    assert handler.run_local_subprocess is kfps_own
    assert [step.cpu_seconds for step in steps] == [None]  # kfp's own start measures no CPU time


def test_a_server_started_beforehand_serves_waiting_tasks_and_outlives_each_block(pipeline_root):
    # before the `server` fixture opens its block: concurrent_tasks() blocks do not nest
    steps = []
    with task_server() as early:  # as the demo starts it, before rendering its phantom
        with concurrent_tasks(step_times=steps), forked_tasks(early) as used:
            assert used is early and not early.ready  # still importing TensorFlow
            assert forked(word="first").output == "True "  # forked all the same: it waited
        assert steps[0].cpu_seconds is not None
        assert early.proc.poll() is None  # the block leaves the caller's server running
        with concurrent_tasks(), forked_tasks(early):
            assert forked(word="again").output == "True "
    assert early.proc.poll() is not None  # task_server() closed it


def test_a_server_not_ready_in_time_is_passed_over_once_not_for_each_task(monkeypatch):
    from histoxai.pipelines import task_fork

    monkeypatch.setattr(task_fork, "READY_TIMEOUT_S", 1.0)  # TensorFlow's import takes longer
    with task_server() as slow:
        started = time.monotonic()
        assert slow.run("", [], {}) is None  # not ready within the second: started as kfp starts it
        waited = time.monotonic() - started
        assert not slow.ready and waited >= 0.9
        started = time.monotonic()
        assert slow.run("", [], {}) is None
        assert time.monotonic() - started < 0.5  # the deadline counts from the server's start
        slow.proc.kill()  # rather than let it finish importing TensorFlow for nothing


@pytest.fixture(scope="module")
def server(pipeline_root, shared_task_server):
    """The worker's server (tests/conftest.py), and the StepTime of every task run while it serves."""
    steps = []
    with concurrent_tasks(step_times=steps), forked_tasks(shared_task_server) as started:
        _wait(lambda: started.ready or started.gone, "the task server")
        assert not started.gone
        yield SimpleNamespace(process=started, steps=steps)


def test_a_task_runs_forked_with_the_callers_environment(server, monkeypatch, capsys):
    monkeypatch.setenv("HISTOXAI_TASK_FORK_TEST", "seen")
    assert forked(word="hello").output == "True seen"
    assert "task says hello" in capsys.readouterr().out  # its output, printed as kfp prints it


def test_a_forked_tasks_step_time_carries_its_cpu_time(server):
    assert forked(word="spin").output.startswith("True")
    spun = server.steps[-1]
    assert spun.task == "started-with-tensorflow"
    assert 0.5 <= spun.cpu_seconds <= spun.seconds * 4  # its own half second and the executor's work


def test_a_failing_forked_task_fails_the_run_with_its_error(server, capsys):
    with pytest.raises(RuntimeError, match="started-with-tensorflow"):
        forked(word="fail")
    printed = capsys.readouterr().out
    assert "ValueError: this task fails on purpose" in printed and "task says fail" in printed
    assert forked(word="again").output.startswith("True")  # the server still serves


def test_python_commands_run_forked_as_a_fresh_interpreter_would_run_them(shared_task_server, tmp_path):
    """What the tests' self-killing commands rely on (tests/conftest.py: python_forked): the exit code, a
    signal's negative code, both output files, the caller's folder and TMPDIR, and `-m`'s sys.argv."""
    _wait(lambda: shared_task_server.ready or shared_task_server.gone, "the task server")
    out, err = tmp_path / "out", tmp_path / "err"
    program = ("import os, sys, tempfile\n"
               "print('tensorflow' in sys.modules, os.getcwd(), tempfile.gettempdir(), sys.argv[1:])\n"
               "print('to stderr', file=sys.stderr)\nsys.exit(3)\n")
    (tmp_path / "scratch").mkdir()
    env = {"PATH": "/usr/bin:/bin", "TMPDIR": str(tmp_path / "scratch")}
    code, cpu_seconds = shared_task_server.python(["-c", program, "a"], env, out, err, cwd=tmp_path)
    assert code == 3 and cpu_seconds >= 0
    assert out.read_text() == f"True {tmp_path} {tmp_path / 'scratch'} ['a']\n"
    assert err.read_text() == "to stderr\n"

    killed = ["-c", "import os, signal\nos.kill(os.getpid(), signal.SIGKILL)\n"]
    assert shared_task_server.python(killed, env, out, out)[0] == -9
    assert shared_task_server.python(["-m", "json.tool", "--no-such-flag"], env, out, out)[0] == 2
    assert "usage: python -m json.tool" in out.read_text()  # the module ran as __main__, with its flags
    assert shared_task_server.python(["-c", "raise SystemExit('a message')"], env, out, out)[0] == 1
    assert out.read_text() == "a message\n"
    with pytest.raises(ValueError, match="-m MODULE or -c CODE"):
        shared_task_server.python(["script.py"], env, out, out)
