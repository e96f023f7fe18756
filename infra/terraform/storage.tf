# Buckets: the pipeline root (run artifacts), the samples bucket (new data; the trigger watches it) and a
# sources bucket (the trigger's code and Cloud Build uploads). All uniform access, no public access,
# versioned, with lifecycle rules that bound what old versions cost.
locals {
  pipeline_root_bucket = coalesce(var.pipeline_root_bucket, "${var.project_id}-${var.name_prefix}-pipeline-root")
  samples_bucket       = coalesce(var.samples_bucket, "${var.project_id}-${var.name_prefix}-samples")
  sources_bucket       = "${var.project_id}-${var.name_prefix}-sources"
  # The retraining trigger's samples URI is the samples bucket's root, so its sample registry
  # (<samples URI>/histoxai-registry.json, REGISTRY in pipelines/) is this object at the top of the bucket.
  samples_uri     = "gs://${google_storage_bucket.samples.name}"
  registry_object = "histoxai-registry.json"
}

resource "google_storage_bucket" "pipeline_root" {
  #checkov:skip=CKV_GCP_62:object access is recorded by Cloud Audit Logs (Data Access); legacy usage logs would need one more bucket
  name                        = local.pipeline_root_bucket
  location                    = var.region
  uniform_bucket_level_access = true
  public_access_prevention    = "enforced"
  force_destroy               = false

  versioning {
    enabled = true
  }

  # Finished runs are read rarely once reviewed: move them to cheaper storage.
  lifecycle_rule {
    condition {
      age = var.nearline_after_days
    }
    action {
      type          = "SetStorageClass"
      storage_class = "NEARLINE"
    }
  }

  lifecycle_rule {
    condition {
      days_since_noncurrent_time = var.noncurrent_retention_days
      with_state                 = "ARCHIVED"
    }
    action {
      type = "Delete"
    }
  }

  lifecycle_rule {
    condition {
      age = 1
    }
    action {
      type = "AbortIncompleteMultipartUpload"
    }
  }

  depends_on = [google_project_service.enabled]
}

resource "google_storage_bucket" "samples" {
  #checkov:skip=CKV_GCP_62:object access is recorded by Cloud Audit Logs (Data Access); legacy usage logs would need one more bucket
  name                        = local.samples_bucket
  location                    = var.region
  uniform_bucket_level_access = true
  public_access_prevention    = "enforced"
  force_destroy               = false

  # Versioning keeps an overwritten sample recoverable; the trigger's sample registry relies on
  # generation numbers, which every object has either way.
  versioning {
    enabled = true
  }

  lifecycle_rule {
    condition {
      days_since_noncurrent_time = var.noncurrent_retention_days
      with_state                 = "ARCHIVED"
    }
    action {
      type = "Delete"
    }
  }

  lifecycle_rule {
    condition {
      age = 1
    }
    action {
      type = "AbortIncompleteMultipartUpload"
    }
  }

  depends_on = [google_project_service.enabled]
}

resource "google_storage_bucket" "sources" {
  #checkov:skip=CKV_GCP_62:object access is recorded by Cloud Audit Logs (Data Access); legacy usage logs would need one more bucket
  name                        = local.sources_bucket
  location                    = var.region
  uniform_bucket_level_access = true
  public_access_prevention    = "enforced"
  force_destroy               = true

  versioning {
    enabled = true
  }

  # Build inputs are only needed while a build runs. Not the whole bucket: templates/ holds the
  # pipeline the retraining trigger submits, functions/ the trigger's source that Terraform manages.
  lifecycle_rule {
    condition {
      age            = 30
      matches_prefix = ["cloudbuild/"]
    }
    action {
      type = "Delete"
    }
  }

  lifecycle_rule {
    condition {
      days_since_noncurrent_time = 7
      with_state                 = "ARCHIVED"
    }
    action {
      type = "Delete"
    }
  }

  depends_on = [google_project_service.enabled]
}
