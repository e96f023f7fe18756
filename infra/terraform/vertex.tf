# What the pipeline's runs use on Vertex AI beside the pipeline itself: the model registry they
# register into, the TensorBoard their training curves go to, and the experiment the trigger's runs
# join (pipelines/retrain.py passes all three; retrain.tf sets them). The pipeline runner's
# roles/aiplatform.user (iam.tf) covers uploading models, writing TensorBoard data and experiment
# metadata; the register step stages a version's files under the pipeline root, where the runner
# already writes.
locals {
  model_registry = coalesce(var.model_registry, "vertex://${var.project_id}/${var.region}")
  # the resource name, projects/PROJECT/locations/REGION/tensorboards/ID, as the pipeline takes it
  tensorboard = var.tensorboard_enabled ? google_vertex_ai_tensorboard.runs[0].id : ""
}

resource "google_vertex_ai_tensorboard" "runs" {
  #checkov:skip=CKV2_GCP_26:Google-managed encryption at rest; a customer key needs a KMS key ring whose lifecycle this module does not own
  count        = var.tensorboard_enabled ? 1 : 0
  display_name = "${var.name_prefix}-runs"
  description  = "Training curves of the histoxai pipeline's runs"
  region       = var.region
  labels       = var.labels
  depends_on   = [google_project_service.enabled]
}
