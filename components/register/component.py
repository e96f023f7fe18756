"""KFP components of the register step: fetch the champion before evaluation, register after it."""

from kfp import dsl
from kfp.dsl import Dataset, Input, Markdown, Metrics, Model, Output

from histoxai.components.register.types import VertexModel
from histoxai.images import CPU_IMAGE


@dsl.component(base_image=CPU_IMAGE, install_kfp_package=False)
def champion_model(model_registry: str, model_name: str, champion: Output[Model]):
    """The current champion of `model_name` in `model_registry` (its files and champion.json), for
    the evaluate step to score beside the new model; champion.json names no version when the
    registry is "" or the model has no champion yet."""
    from histoxai.artifacts import location
    from histoxai.components.register.register import fetch_champion

    info = fetch_champion(model_registry, model_name, location(champion), overwrite=True)
    champion.metadata.update({"registry": model_registry, "name": model_name, "version": info["version"]})


@dsl.component(base_image=CPU_IMAGE, install_kfp_package=False)
def register_model(
    model: Input[Model],
    split: Input[Dataset],
    evaluation: Input[Dataset],
    evaluated_as: str,
    model_registry: str,
    model_name: str,
    promotion_metric: str,
    promotion_margin: float,
    promotion_tolerance: float,
    run_name: str,
    registered: Output[Model],
    vertex_model: Output[VertexModel],
    comparison: Output[Markdown],
    metrics: Output[Metrics],
):
    """Register `model` as the next version of `model_name`; the champion alias moves to it only when
    the promotion rule says it beats the champion that the evaluate step scored beside it (as
    `<evaluated_as>_champion`) on the patches neither trained on. Outputs: registered
    (registration.json), vertex_model (the version, typed for the Vertex AI UI), comparison
    (champion vs challenger per target and sample, and the verdict), metrics (promoted, both scores).
    Defaults: components/register/params.py (the pipeline passes every value)."""
    import json

    from histoxai import artifacts, storage
    from histoxai.artifacts import location
    from histoxai.components.register.register import check_rule, register

    rule = check_rule(promotion_metric, promotion_margin, promotion_tolerance)
    result = register(model_dir=location(model), split_dir=location(split), evaluation=location(evaluation),
                      model=evaluated_as, registry=model_registry, name=model_name, rule=rule, run=run_name,
                      staging=location(registered))
    version, verdict = result["version"], result["verdict"]
    summary = {"registry": result["registry"], "name": model_name, "version": version["version"],
               "resource_name": version["resource_name"], "uri": version["uri"],
               "promoted": verdict["promote"], "reason": verdict["reason"],
               "challenger_score": verdict["challenger"], "champion_score": verdict["champion"]}
    text = json.dumps(summary, indent=1) + "\n"
    storage.write_text(storage.join(location(registered), artifacts.REGISTRATION), text)
    storage.write_text(location(comparison), result["markdown"])
    metrics.log_metric("promoted", 1.0 if verdict["promote"] else 0.0)
    for name in ("challenger", "champion"):
        if verdict[name] is not None:
            metrics.log_metric(f"{name}_{rule.metric}", verdict[name])
    storage.write_text(location(vertex_model), text)
    if result["registry"].startswith("vertex://"):  # the UI opens the model's page from this URI
        region = result["registry"].rstrip("/").rsplit("/", 1)[-1]
        vertex_model.uri = f"https://{region}-aiplatform.googleapis.com/v1/{version['resource_name']}"
    vertex_model.metadata.update({"resourceName": version["resource_name"], "version": version["version"],
                                  "promoted": verdict["promote"]})
    registered.metadata.update(summary)
