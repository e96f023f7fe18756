# Service accounts, each with only what its job needs; grants are on the one bucket or repository
# involved wherever Google Cloud offers that, and project-wide only where it does not.

# Runs the pipeline's tasks on Vertex AI.
resource "google_service_account" "pipeline" {
  account_id   = "${var.name_prefix}-pipeline"
  display_name = "histoxai pipeline runner"
  depends_on   = [google_project_service.enabled]
}

# Identity of the retraining function: reads new samples, updates the sample registry, submits runs.
resource "google_service_account" "retrain" {
  account_id   = "${var.name_prefix}-retrain"
  display_name = "histoxai retraining trigger"
  depends_on   = [google_project_service.enabled]
}

# Eventarc delivers storage events to the function as this account.
resource "google_service_account" "retrain_events" {
  account_id   = "${var.name_prefix}-retrain-events"
  display_name = "histoxai trigger event delivery"
  depends_on   = [google_project_service.enabled]
}

# Builds the function's container from its source.
resource "google_service_account" "retrain_build" {
  account_id   = "${var.name_prefix}-retrain-build"
  display_name = "histoxai trigger function build"
  depends_on   = [google_project_service.enabled]
}

# Builds and pushes the images (`make build`).
resource "google_service_account" "image_build" {
  account_id   = "${var.name_prefix}-image-build"
  display_name = "histoxai image build"
  depends_on   = [google_project_service.enabled]
}

# Runs the review app on Cloud Run: reads run artifacts, nothing else.
resource "google_service_account" "app" {
  account_id   = "${var.name_prefix}-app"
  display_name = "histoxai review app"
  depends_on   = [google_project_service.enabled]
}

# --- pipeline runner ---------------------------------------------------------------------------------
# Vertex AI has no narrower scope than the project for running jobs and writing ML metadata.
resource "google_project_iam_member" "pipeline_project" {
  for_each = toset(["roles/aiplatform.user", "roles/logging.logWriter"])
  project  = var.project_id
  role     = each.value
  member   = google_service_account.pipeline.member
}

resource "google_storage_bucket_iam_member" "pipeline_root_rw" {
  bucket = google_storage_bucket.pipeline_root.name
  role   = "roles/storage.objectUser"
  member = google_service_account.pipeline.member
}

resource "google_storage_bucket_iam_member" "pipeline_samples_read" {
  bucket = google_storage_bucket.samples.name
  role   = "roles/storage.objectViewer"
  member = google_service_account.pipeline.member
}

resource "google_artifact_registry_repository_iam_member" "pipeline_images" {
  location   = google_artifact_registry_repository.docker.location
  repository = google_artifact_registry_repository.docker.name
  role       = "roles/artifactregistry.reader"
  member     = google_service_account.pipeline.member
}

# --- retraining function -----------------------------------------------------------------------------
resource "google_project_iam_member" "retrain_project" {
  for_each = toset(["roles/aiplatform.user", "roles/logging.logWriter"])
  project  = var.project_id
  role     = each.value
  member   = google_service_account.retrain.member
}

# Reads the uploaded samples (and the sample registry); can neither change nor delete an upload.
resource "google_storage_bucket_iam_member" "retrain_samples_read" {
  bucket = google_storage_bucket.samples.name
  role   = "roles/storage.objectViewer"
  member = google_service_account.retrain.member
}

# Writes the sample registry and no other object. The registry is rewritten by read-modify-write with a
# generation precondition, and replacing an object needs delete as well as create, so the writing role
# holds for that one object name only.
resource "google_storage_bucket_iam_member" "retrain_writes_registry" {
  bucket = google_storage_bucket.samples.name
  role   = "roles/storage.objectUser"
  member = google_service_account.retrain.member
  condition {
    title       = "sample-registry-only"
    description = "Only the retraining trigger's sample registry object"
    expression  = "resource.name == \"projects/_/buckets/${google_storage_bucket.samples.name}/objects/${local.registry_object}\""
  }
}

# The Vertex AI SDK checks that the pipeline root's bucket exists before it submits (storage.buckets.get).
resource "google_storage_bucket_iam_member" "retrain_sees_pipeline_root" {
  bucket = google_storage_bucket.pipeline_root.name
  role   = "roles/storage.legacyBucketReader"
  member = google_service_account.retrain.member
}

# Reads the compiled pipeline it submits, and nothing else in the sources bucket.
resource "google_storage_bucket_iam_member" "retrain_reads_templates" {
  bucket = google_storage_bucket.sources.name
  role   = "roles/storage.objectViewer"
  member = google_service_account.retrain.member
  condition {
    title      = "templates-only"
    expression = "resource.name.startsWith(\"projects/_/buckets/${google_storage_bucket.sources.name}/objects/templates/\")"
  }
}

# Submitting a run that executes as the pipeline runner needs actAs on that one account.
resource "google_service_account_iam_member" "retrain_acts_as_pipeline" {
  service_account_id = google_service_account.pipeline.name
  role               = "roles/iam.serviceAccountUser"
  member             = google_service_account.retrain.member
}

# --- event delivery ----------------------------------------------------------------------------------
resource "google_project_iam_member" "retrain_events_receiver" {
  project = var.project_id
  role    = "roles/eventarc.eventReceiver"
  member  = google_service_account.retrain_events.member
}

# Cloud Storage publishes object events through Pub/Sub as its service agent.
data "google_storage_project_service_account" "gcs_agent" {
  depends_on = [google_project_service.enabled]
}

resource "google_project_iam_member" "gcs_agent_publishes" {
  project = var.project_id
  role    = "roles/pubsub.publisher"
  member  = "serviceAccount:${data.google_storage_project_service_account.gcs_agent.email_address}"
}

# --- function build ----------------------------------------------------------------------------------
# Reads the source zip, pushes the function's image to the project's Docker repository, writes logs.
resource "google_project_iam_member" "retrain_build_logs" {
  project = var.project_id
  role    = "roles/logging.logWriter"
  member  = google_service_account.retrain_build.member
}

resource "google_artifact_registry_repository_iam_member" "retrain_build_push" {
  location   = google_artifact_registry_repository.docker.location
  repository = google_artifact_registry_repository.docker.name
  role       = "roles/artifactregistry.writer"
  member     = google_service_account.retrain_build.member
}

resource "google_storage_bucket_iam_member" "retrain_build_sources" {
  bucket = google_storage_bucket.sources.name
  role   = "roles/storage.objectViewer"
  member = google_service_account.retrain_build.member
}

# --- image build -------------------------------------------------------------------------------------
resource "google_project_iam_member" "image_build_logs" {
  project = var.project_id
  role    = "roles/logging.logWriter"
  member  = google_service_account.image_build.member
}

resource "google_artifact_registry_repository_iam_member" "image_build_push" {
  location   = google_artifact_registry_repository.docker.location
  repository = google_artifact_registry_repository.docker.name
  role       = "roles/artifactregistry.writer"
  member     = google_service_account.image_build.member
}

resource "google_storage_bucket_iam_member" "image_build_sources" {
  bucket = google_storage_bucket.sources.name
  role   = "roles/storage.objectViewer"
  member = google_service_account.image_build.member
}

# --- review app --------------------------------------------------------------------------------------
resource "google_storage_bucket_iam_member" "app_reads_runs" {
  bucket = google_storage_bucket.pipeline_root.name
  role   = "roles/storage.objectViewer"
  member = google_service_account.app.member
}
