# Versions of Terraform and the providers this configuration is written for.
terraform {
  required_version = ">= 1.6, < 2.0"

  required_providers {
    google = {
      source  = "hashicorp/google"
      version = "~> 7.0"
    }
    archive = {
      source  = "hashicorp/archive"
      version = "~> 2.7"
    }
  }

  # State is local (terraform.tfstate.d/<env>/ per workspace). For a team, add a "gcs" backend here
  # and pass its bucket with `terraform init -backend-config=bucket=<state-bucket>`.
}

provider "google" {
  project        = var.project_id
  region         = var.region
  default_labels = var.labels
}
