# What `make build`, `make deploy`, the pipeline commands and the README read back (terraform output -raw NAME).

output "project_id" {
  value = var.project_id
}

output "region" {
  value = var.region
}

output "pipeline_root" {
  description = "Pipeline root for Vertex AI runs (histoxai submit --pipeline-root)."
  value       = "gs://${google_storage_bucket.pipeline_root.name}"
}

output "samples_bucket" {
  description = "Upload new samples under <this>/<sample-id>/, with the READY marker written last."
  value       = "gs://${google_storage_bucket.samples.name}"
}

output "sources_bucket" {
  value = "gs://${google_storage_bucket.sources.name}"
}

output "docker_registry" {
  description = "Image prefix: <this>/histoxai-{cpu,gpu,app}:<tag>."
  value       = local.docker_registry
}

output "kfp_registry" {
  description = "Artifact Registry host for compiled pipeline templates."
  value       = local.kfp_registry
}

output "pipeline_template" {
  value = local.pipeline_template
}

output "pipeline_service_account" {
  description = "Vertex AI runs execute as this account (histoxai submit --service-account)."
  value       = google_service_account.pipeline.email
}

output "image_build_service_account" {
  value = google_service_account.image_build.email
}

output "app_service_account" {
  description = "Run the review app on Cloud Run as this account."
  value       = google_service_account.app.email
}

output "images" {
  description = "Image references for var.image_tag."
  value       = local.images
}

output "retrain_function" {
  description = "Name of the retraining function (empty when retrain_enabled is false)."
  value       = var.retrain_enabled ? google_cloudfunctions2_function.retrain[0].name : ""
}

output "model_registry" {
  description = "Model registry of the trigger's runs (histoxai models --registry, run parameter model_registry)."
  value       = local.model_registry
}

output "tensorboard" {
  description = "Vertex AI TensorBoard of the runs (run parameter tensorboard); empty when tensorboard_enabled is false."
  value       = local.tensorboard
}

output "experiment" {
  description = "Vertex AI experiment the trigger's runs join (histoxai submit --experiment)."
  value       = var.experiment
}
