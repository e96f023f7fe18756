"""kfp.local's DAG runner, changed to start every task as soon as its upstream tasks have finished.

kfp 2.17's local orchestrators (kfp.local.orchestrator: dag_orchestrator.run_dag for a DAG without
control flow, enhanced_dag_orchestrator.run_enhanced_dag for any other) run a DAG's tasks one after
another in a topological order; only the iterations of a dsl.ParallelFor overlap. In this pipeline the
two models' branches (train, predict, explain, register) are independent, and one TensorFlow task keeps
about 1.4 of 2 cores busy, so a local run left much of the machine idle. `concurrent_tasks()` swaps in
`run_dag` below for the duration of one run: the same task kinds, the same outputs, and the enhanced
runner's handling of a failure (its dependents are skipped, the other tasks still run, the DAG fails);
only the order in time differs; and a dsl.OneOf of artifacts resolves to the branch that ran
(_output_artifacts), which kfp's runner refuses. A DAG with an exit handler is handed to kfp's own
runner unchanged (this pipeline has none). Tasks whose command holds a pip install still run one at a
time (kfp serialises them); the project's components install nothing (install_kfp_package=False).

It reads private names of kfp.local's orchestrator (kfp is pinned in constraints.txt);
tests/test_local_scheduler.py runs two tasks that each wait for the other, which only a concurrent
runner can finish, so an upgrade that breaks this fails there.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import dataclasses
import os
import threading
import time

_SWAP_LOCK = threading.Lock()
_TASK_CPU = threading.local()  # each task runs in its own pool thread until it ends


@dataclasses.dataclass(frozen=True)
class StepTime:
    """One executed task (not a loop or sub-DAG): its name, when it started, how long it took and, when
    its runner measured it, the CPU time it used (all its threads)."""
    task: str
    started: float  # time.perf_counter() at its start (LocalRun.steps counts it from the run's start)
    seconds: float
    cpu_seconds: float | None = None


def record_task_cpu(seconds: float) -> None:
    """Called by a task runner in the thread that runs the task (pipelines/task_fork.py): the CPU time
    the task's process used, which its StepTime then carries. A task that waited for the cores shows
    more seconds than CPU seconds over its cores."""
    _TASK_CPU.seconds = seconds


def default_parallel_tasks() -> int:
    """Tasks that may run at once: one per core, at least two (one TensorFlow task rarely fills two)."""
    return max(2, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 2)


@contextlib.contextmanager
def concurrent_tasks(max_parallel: int | None = None, step_times: list[StepTime] | None = None):
    """Within this block kfp.local runs independent tasks at the same time, at most `max_parallel`
    per DAG level (default: default_parallel_tasks()); each executed task's StepTime is appended to
    `step_times` when given."""
    from kfp.local.orchestrator import dag_orchestrator as kfp_plain
    from kfp.local.orchestrator import enhanced_dag_orchestrator as kfp_dag

    limit = max_parallel or default_parallel_tasks()
    # kfp runs a DAG without control flow with its plain runner, any other with the enhanced one
    originals = (kfp_plain.run_dag, kfp_dag.run_enhanced_dag)

    def run(**kwargs):
        return run_dag(kfp_dag, originals[1], limit, step_times=step_times, **kwargs)

    with _SWAP_LOCK:
        kfp_plain.run_dag = kfp_dag.run_enhanced_dag = run
        try:
            yield
        finally:
            kfp_plain.run_dag, kfp_dag.run_enhanced_dag = originals


def run_dag(kfp_dag, original, limit: int, *, pipeline_resource_name, dag_component_spec, components,
            executors, dag_arguments, pipeline_root, runner, unique_pipeline_id, fail_stack,
            parent_io_store=None, step_times=None):
    """run_enhanced_dag's contract (its keyword arguments, (outputs, status)), tasks started when ready;
    step_times (a list or None) receives a StepTime for each task that runs an executor."""
    from kfp.local import graph_utils, io, status
    from kfp.local.orchestrator.orchestrator_utils import OrchestratorUtils
    from kfp.pipeline_spec import pipeline_spec_pb2

    kwargs = dict(pipeline_resource_name=pipeline_resource_name, dag_component_spec=dag_component_spec,
                  components=components, executors=executors, dag_arguments=dag_arguments,
                  pipeline_root=pipeline_root, runner=runner, unique_pipeline_id=unique_pipeline_id,
                  fail_stack=fail_stack, parent_io_store=parent_io_store)
    strategies = pipeline_spec_pb2.PipelineTaskSpec.TriggerPolicy.TriggerStrategy
    all_completed = strategies.ALL_UPSTREAM_TASKS_COMPLETED
    tasks = dict(dag_component_spec.dag.tasks.items())
    if any(spec.trigger_policy.strategy == all_completed and kfp_dag._has_task_final_status_input(spec)
           for spec in tasks.values()):
        return original(**kwargs)  # exit handlers: kfp's own order

    io_store = io.IOStore(parent=parent_io_store)
    arguments = OrchestratorUtils.join_user_inputs_and_defaults(
        dag_arguments=dag_arguments, dag_inputs_spec=dag_component_spec.input_definitions)
    for key, value in arguments.items():
        io_store.put_parent_input(key, value)
    shared = dict(pipeline_resource_name=pipeline_resource_name, components=components,
                  executors=executors, io_store=io_store, pipeline_root=pipeline_root, runner=runner,
                  unique_pipeline_id=unique_pipeline_id, fail_stack=fail_stack)
    conditions, loops = kfp_dag.ConditionEvaluator(), kfp_dag.ParallelExecutor()

    def kind(spec) -> str:  # as kfp classifies a task
        if spec.trigger_policy.condition:
            return "condition"
        return "loop" if spec.WhichOneof("iterator") and kfp_dag._has_valid_iterator(spec) else "task"

    def execute(name, spec):
        """(outputs or None, succeeded); a ParallelFor writes its iterations' outputs itself."""
        if kind(spec) == "condition" and not conditions.evaluate_condition(spec.trigger_policy.condition,
                                                                           io_store):
            return None, True  # a branch not taken: its dependents go on (dsl.OneOf, dsl.Else)
        if kind(spec) == "loop":
            return None, not kfp_dag._run_parallel_for_task(task_name=name, task_spec=spec,
                                                             parallel_executor=loops, **shared)
        started = time.perf_counter()
        _TASK_CPU.seconds = None
        outputs, task_status = kfp_dag.execute_task(task_name=name, task_spec=spec, **shared)
        runs_an_executor = components[spec.component_ref.name].WhichOneof("implementation") != "dag"
        if step_times is not None and runs_an_executor:
            step_times.append(StepTime(name, started, time.perf_counter() - started, _TASK_CPU.seconds))
        return outputs, task_status == status.Status.SUCCESS

    # kfp's order decides which ready task starts first: the end of its stack is its next task
    order = {name: rank for rank, name in enumerate(reversed(graph_utils.topological_sort_tasks(tasks)))}
    waiting = sorted(tasks, key=order.__getitem__)
    upstream = {name: set(spec.dependent_tasks) & tasks.keys() for name, spec in tasks.items()}
    finished, failed, running = set(), set(), {}
    with concurrent.futures.ThreadPoolExecutor(max_workers=limit, thread_name_prefix="kfp-task") as pool:
        while waiting or running:
            ready = [n for n in waiting if upstream[n] <= finished | failed]
            if not ready and not running:
                raise RuntimeError(f"tasks {', '.join(waiting)} wait for tasks that never run")
            for name in ready:
                if len(running) >= limit:
                    break
                waiting.remove(name)
                spec = tasks[name]
                if upstream[name] & failed and spec.trigger_policy.strategy != all_completed:
                    failed.add(name)  # as kfp: skipped because an upstream task failed
                    io_store.put_task_status(name, "FAILED")
                    continue
                running[pool.submit(execute, name, spec)] = name
            if not running:
                continue  # only skipped tasks were ready: look again
            done, _ = concurrent.futures.wait(running, return_when=concurrent.futures.FIRST_COMPLETED)
            for future in done:
                name = running.pop(future)
                outputs, succeeded = future.result()
                if not succeeded:
                    if kind(tasks[name]) != "loop":  # as kfp: a loop's failed iteration is named instead
                        fail_stack.append(name)
                    failed.add(name)
                    io_store.put_task_status(name, "FAILED")
                    continue
                finished.add(name)
                if outputs is not None:
                    io_store.put_task_status(name, "SUCCEEDED")
                    for key, value in outputs.items():
                        io_store.put_task_output(name, key, value)
    if failed:
        return {}, status.Status.FAILURE
    outputs = OrchestratorUtils.get_dag_output_parameters(dag_outputs_spec=dag_component_spec.dag.outputs,
                                                          io_store=io_store)
    return {**outputs, **_output_artifacts(dag_component_spec.dag.outputs, io_store)}, status.Status.SUCCESS


def _output_artifacts(dag_outputs, io_store) -> dict:
    """A DAG's output artifacts, a dsl.OneOf among them included: the one its branch that ran produced.
    (kfp 2.17's local runner resolves a OneOf of parameters but refuses one of artifacts, which the
    compiler emits and Vertex AI runs; the tuned and untuned trainings' models are such a OneOf.)"""
    found = {}
    for key, spec in dag_outputs.artifacts.items():
        produced = []
        for selector in spec.artifact_selectors:
            try:
                produced.append(io_store.get_task_output(selector.producer_subtask,
                                                         selector.output_artifact_key))
            except (KeyError, ValueError):  # a branch that did not run
                continue
        if len(produced) != 1:
            raise ValueError(f"DAG output artifact {key!r}: {len(produced)} of its "
                             f"{len(spec.artifact_selectors)} producers ran; expected exactly one")
        found[key] = produced[0]
    return found
