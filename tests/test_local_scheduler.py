"""The local runner starts independent tasks together (pipelines/local_scheduler.py), on kfp.local itself."""

import pytest
from kfp import dsl, local

from histoxai.pipelines.local_scheduler import StepTime, concurrent_tasks


@dsl.component(base_image="python:3.11", install_kfp_package=False)  # no pip: kfp would serialise the tasks
def meet(folder: str, me: str, other: str, wait_s: float) -> str:
    """Leaves a mark, then waits for the other task's: only tasks that run at once both finish."""
    import pathlib
    import time

    root = pathlib.Path(folder)
    (root / me).write_text("here")
    deadline = time.monotonic() + wait_s
    while not (root / other).exists():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{other} never started while {me} ran")
        time.sleep(0.05)
    return me


@dsl.component(base_image="python:3.11", install_kfp_package=False)  # no pip: kfp would serialise the tasks
def mark(folder: str, name: str, fail: bool) -> str:
    import pathlib

    if fail:
        raise ValueError(f"{name} fails on purpose")
    (pathlib.Path(folder) / name).write_text("done")
    return name


@dsl.pipeline(name="meeting")
def meeting(folder: str) -> str:
    first = meet(folder=folder, me="a", other="b", wait_s=60.0)
    second = meet(folder=folder, me="b", other="a", wait_s=60.0)
    return mark(folder=folder, name=f"{first.output}-{second.output}", fail=False).output


@dsl.pipeline(name="one-fails")
def one_fails(folder: str):
    broken = mark(folder=folder, name="broken", fail=True)
    mark(folder=folder, name="independent", fail=False)
    mark(folder=folder, name="downstream", fail=False).after(broken)


@dsl.component(base_image="python:3.11", install_kfp_package=False)
def write(text: str, out: dsl.Output[dsl.Artifact]):
    import pathlib

    pathlib.Path(out.path).write_text(text)


@dsl.component(base_image="python:3.11", install_kfp_package=False)
def read(given: dsl.Input[dsl.Artifact]) -> str:
    import pathlib

    return pathlib.Path(given.path).read_text()


@dsl.pipeline(name="either-artifact")
def either_artifact(left: bool) -> str:
    with dsl.If(left == True):  # noqa: E712 (a KFP condition)
        chosen_left = write(text="left")
    with dsl.Else():
        chosen_right = write(text="right")
    return read(given=dsl.OneOf(chosen_left.outputs["out"], chosen_right.outputs["out"])).output


@pytest.fixture
def local_root(tmp_path):
    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(tmp_path / "root"),
               raise_on_error=True)
    return tmp_path


def test_two_independent_tasks_run_at_the_same_time(local_root):
    step_times: list[StepTime] = []
    with concurrent_tasks(max_parallel=2, step_times=step_times):
        task = meeting(folder=str(local_root))
    assert task.output == "a-b"
    assert (local_root / "a-b").read_text() == "done"  # the task after both ran with both outputs
    # each executed task timed once; the two meetings overlap and the mark starts after both ended
    times = {t.task: t for t in step_times}
    assert sorted(times) == ["mark", "meet", "meet-2"] and len(step_times) == 3
    first, second, last = times["meet"], times["meet-2"], times["mark"]
    assert max(first.started, second.started) < min(first.started + first.seconds,
                                                     second.started + second.seconds)
    assert last.started >= max(first.started + first.seconds, second.started + second.seconds)


def test_a_failed_task_skips_its_dependents_and_not_the_others(local_root):
    with concurrent_tasks(max_parallel=2), pytest.raises(RuntimeError, match="mark"):
        one_fails(folder=str(local_root))
    assert (local_root / "independent").exists()
    assert not (local_root / "downstream").exists()
    assert not (local_root / "broken").exists()


@pytest.mark.parametrize("left", [True, False])
def test_a_oneof_of_artifacts_is_the_branch_that_ran(local_root, left):
    with concurrent_tasks(max_parallel=2):
        task = either_artifact(left=left)
    assert task.output == ("left" if left else "right")
    with pytest.raises(ValueError, match="Expected 1 artifact"):  # why the local runner resolves it
        either_artifact(left=left)


def test_kfps_own_runners_are_back_after_the_block():
    from kfp.local.orchestrator import dag_orchestrator as kfp_plain
    from kfp.local.orchestrator import enhanced_dag_orchestrator as kfp_dag

    originals = (kfp_plain.run_dag, kfp_dag.run_enhanced_dag)
    with concurrent_tasks():
        assert kfp_plain.run_dag is not originals[0] and kfp_dag.run_enhanced_dag is not originals[1]
    assert (kfp_plain.run_dag, kfp_dag.run_enhanced_dag) == originals
