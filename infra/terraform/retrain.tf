# The retraining trigger: a READY marker finalized in the samples bucket -> Eventarc -> a Cloud Run
# function (functions-framework, CloudEvent) that validates the sample, registers it and submits a run.
# The handler is histoxai.pipelines.retrain.on_sample_uploaded (pipelines/retrain.py); `make deploy` packs
# it into retrain_source_dir.

data "archive_file" "retrain_source" {
  count       = var.retrain_enabled ? 1 : 0
  type        = "zip"
  source_dir  = var.retrain_source_dir
  output_path = "${path.module}/.build/retrain-source.zip"
}

# Named by content hash, so a code change redeploys the function.
resource "google_storage_bucket_object" "retrain_source" {
  count  = var.retrain_enabled ? 1 : 0
  bucket = google_storage_bucket.sources.name
  name   = "functions/retrain-${data.archive_file.retrain_source[0].output_sha256}.zip"
  source = data.archive_file.retrain_source[0].output_path
}

resource "google_cloudfunctions2_function" "retrain" {
  count       = var.retrain_enabled ? 1 : 0
  name        = "${var.name_prefix}-retrain"
  location    = var.region
  description = "Submits a histoxai pipeline run when a complete new sample lands in gs://${google_storage_bucket.samples.name}"

  # The function's image goes to the project's own Docker repository (its cleanup policies apply).
  build_config {
    runtime           = var.retrain_runtime
    entry_point       = var.retrain_entry_point
    service_account   = google_service_account.retrain_build.id
    docker_repository = google_artifact_registry_repository.docker.id
    source {
      storage_source {
        bucket = google_storage_bucket.sources.name
        object = google_storage_bucket_object.retrain_source[0].name
      }
    }
  }

  service_config {
    available_memory                 = "1Gi"
    timeout_seconds                  = 300
    min_instance_count               = 0
    max_instance_count               = var.retrain_max_instances
    max_instance_request_concurrency = 1
    ingress_settings                 = "ALLOW_INTERNAL_ONLY"
    all_traffic_on_latest_revision   = true
    service_account_email            = google_service_account.retrain.email
    # What pipelines/retrain.py reads (Settings.from_env): the samples, the compiled pipeline, Vertex AI,
    # and what every run gets: the experiment, the model registry and the TensorBoard (vertex.tf).
    environment_variables = {
      HISTOXAI_PROJECT           = var.project_id
      HISTOXAI_REGION            = var.region
      HISTOXAI_SAMPLES_BUCKET    = local.samples_uri
      HISTOXAI_PIPELINE_ROOT     = "gs://${google_storage_bucket.pipeline_root.name}"
      HISTOXAI_PIPELINE_TEMPLATE = local.pipeline_template
      HISTOXAI_SERVICE_ACCOUNT   = google_service_account.pipeline.email
      HISTOXAI_RUN_PARAMETERS    = jsonencode(var.retrain_run_parameters)
      HISTOXAI_EXPERIMENT        = var.experiment
      HISTOXAI_MODEL_REGISTRY    = local.model_registry
      HISTOXAI_TENSORBOARD       = local.tensorboard
    }
  }

  # Creates the Eventarc trigger. Retries redeliver on a failed handler; the handler is idempotent and
  # acknowledges (does not fail on) samples it rejects, so a bad upload is not retried for a day.
  event_trigger {
    trigger_region        = var.region
    event_type            = "google.cloud.storage.object.v1.finalized"
    retry_policy          = "RETRY_POLICY_RETRY"
    service_account_email = google_service_account.retrain_events.email
    event_filters {
      attribute = "bucket"
      value     = google_storage_bucket.samples.name
    }
  }

  depends_on = [
    google_project_iam_member.gcs_agent_publishes,
    google_project_iam_member.retrain_events_receiver,
    google_project_iam_member.retrain_build_logs,
    google_artifact_registry_repository_iam_member.retrain_build_push,
    google_storage_bucket_iam_member.retrain_build_sources,
  ]
}

# Eventarc may invoke this one service, nothing else.
resource "google_cloud_run_v2_service_iam_member" "retrain_events_invoke" {
  count    = var.retrain_enabled ? 1 : 0
  project  = var.project_id
  location = var.region
  name     = google_cloudfunctions2_function.retrain[0].name
  role     = "roles/run.invoker"
  member   = google_service_account.retrain_events.member
}
