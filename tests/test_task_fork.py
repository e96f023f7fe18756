"""Local tasks forked from a server that has imported TensorFlow (pipelines/task_fork.py), on kfp.local."""

import time

import pytest
from kfp import dsl, local

from histoxai.pipelines.local_scheduler import concurrent_tasks
from histoxai.pipelines.task_fork import forked_tasks


@dsl.component(base_image="python:3.11", install_kfp_package=False)
def started_with_tensorflow(word: str) -> str:
    """Whether TensorFlow was already imported when the task began (only a forked task has it)."""
    import os
    import sys

    print(f"task says {word}")
    if word == "fail":
        raise ValueError("this task fails on purpose")
    return f"{'tensorflow' in sys.modules} {os.environ.get('HISTOXAI_TASK_FORK_TEST', '')}"


@dsl.pipeline(name="forked")
def forked(word: str) -> str:
    return started_with_tensorflow(word=word).output


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    local.init(runner=local.SubprocessRunner(use_venv=False),
               pipeline_root=str(tmp_path_factory.mktemp("root")), raise_on_error=True)
    with concurrent_tasks(), forked_tasks() as started:
        deadline = time.monotonic() + 120
        while not started.ready:  # until then a task starts as kfp starts it
            assert time.monotonic() < deadline and not started.gone, "the task server never got ready"
            time.sleep(0.1)
        yield started


def test_a_task_runs_forked_with_the_callers_environment(server, monkeypatch, capsys):
    monkeypatch.setenv("HISTOXAI_TASK_FORK_TEST", "seen")
    assert forked(word="hello").output == "True seen"
    assert "task says hello" in capsys.readouterr().out  # its output, printed as kfp prints it


def test_a_failing_forked_task_fails_the_run_with_its_error(server, capsys):
    with pytest.raises(RuntimeError, match="started-with-tensorflow"):
        forked(word="fail")
    printed = capsys.readouterr().out
    assert "ValueError: this task fails on purpose" in printed and "task says fail" in printed
    assert forked(word="again").output.startswith("True")  # the server still serves


def test_kfps_own_start_is_back_after_the_block():
    from kfp.local import subprocess_task_handler as handler

    original = handler.run_local_subprocess
    with forked_tasks():
        assert handler.run_local_subprocess is not original
    assert handler.run_local_subprocess is original
