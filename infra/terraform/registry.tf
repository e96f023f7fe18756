# Artifact Registry: a Docker repository for the three images and a KFP repository for compiled pipelines.
resource "google_artifact_registry_repository" "docker" {
  #checkov:skip=CKV_GCP_84:Google-managed encryption at rest; a customer key needs a KMS key ring whose lifecycle this module does not own
  location      = var.region
  repository_id = var.name_prefix
  format        = "DOCKER"
  description   = "histoxai container images (cpu, gpu, app)"

  cleanup_policy_dry_run = false
  cleanup_policies {
    id     = "keep-recent"
    action = "KEEP"
    most_recent_versions {
      keep_count = var.docker_keep_versions
    }
  }
  cleanup_policies {
    id     = "delete-untagged"
    action = "DELETE"
    condition {
      tag_state  = "UNTAGGED"
      older_than = "604800s"
    }
  }
  cleanup_policies {
    id     = "delete-old"
    action = "DELETE"
    condition {
      tag_state  = "ANY"
      older_than = "7776000s"
    }
  }

  depends_on = [google_project_service.enabled]
}

resource "google_artifact_registry_repository" "kfp" {
  #checkov:skip=CKV_GCP_84:Google-managed encryption at rest; a customer key needs a KMS key ring whose lifecycle this module does not own
  location      = var.region
  repository_id = "${var.name_prefix}-pipelines"
  format        = "KFP"
  description   = "Compiled histoxai pipeline templates"

  depends_on = [google_project_service.enabled]
}

locals {
  docker_registry = "${var.region}-docker.pkg.dev/${var.project_id}/${google_artifact_registry_repository.docker.repository_id}"
  kfp_registry    = "https://${var.region}-kfp.pkg.dev/${var.project_id}/${google_artifact_registry_repository.kfp.repository_id}"
  images = {
    cpu = "${local.docker_registry}/histoxai-cpu:${var.image_tag}"
    gpu = "${local.docker_registry}/histoxai-gpu:${var.image_tag}"
    app = "${local.docker_registry}/histoxai-app:${var.image_tag}"
  }
  # What `make template` compiles with the images of var.image_tag; the retraining trigger submits it.
  pipeline_template = coalesce(var.pipeline_template, "gs://${google_storage_bucket.sources.name}/templates/histoxai.yaml")
}
