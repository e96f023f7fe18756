# Inputs: which project and region, how things are named, and the retraining trigger's source.

variable "project_id" {
  description = "Google Cloud project that holds everything (it must exist, with billing enabled)."
  type        = string
}

variable "region" {
  description = "Region for buckets, Artifact Registry, Vertex AI and the trigger (pick one with the GPUs you want)."
  type        = string
  default     = "europe-west4"
}

variable "name_prefix" {
  description = "Prefix for every resource name; also the service accounts' id prefix."
  type        = string
  default     = "histoxai"
  validation {
    condition     = can(regex("^[a-z][a-z0-9-]{2,10}[a-z0-9]$", var.name_prefix))
    error_message = "name_prefix: 4-12 lowercase letters, digits or hyphens, starting with a letter (service account ids allow 30 characters in all)."
  }
}

variable "pipeline_root_bucket" {
  description = "Name of the bucket for pipeline artifacts; empty means <project_id>-<name_prefix>-pipeline-root."
  type        = string
  default     = ""
}

variable "samples_bucket" {
  description = "Name of the bucket new samples are uploaded to; empty means <project_id>-<name_prefix>-samples."
  type        = string
  default     = ""
}

variable "labels" {
  description = "Labels put on every resource that takes them."
  type        = map(string)
  default     = { app = "histoxai" }
}

variable "nearline_after_days" {
  description = "Pipeline-root objects move to Nearline storage after this many days (runs are read rarely after review)."
  type        = number
  default     = 30
}

variable "noncurrent_retention_days" {
  description = "Overwritten or deleted object versions are kept this many days, then removed."
  type        = number
  default     = 30
}

variable "docker_keep_versions" {
  description = "Artifact Registry keeps this many most recent versions of each image; older ones are deleted."
  type        = number
  default     = 10
}

variable "image_tag" {
  description = "Tag of the images `make build` pushed: the git commit, which `make deploy` passes. No default, and never `latest`: a moving tag would let the same configuration run different images."
  type        = string
  validation {
    condition     = can(regex("^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$", var.image_tag)) && var.image_tag != "latest"
    error_message = "image_tag: the tag `make build` pushed (e.g. the 12-character git commit); a Docker tag of at most 128 letters, digits, '_', '.' or '-', and not 'latest'."
  }
}

variable "pipeline_template" {
  description = "Compiled pipeline (gs:// URI) the trigger submits; empty means gs://<sources bucket>/templates/histoxai.yaml, which `make template` writes."
  type        = string
  default     = ""
  validation {
    condition     = var.pipeline_template == "" || startswith(var.pipeline_template, "gs://")
    error_message = "pipeline_template must be a gs:// URI of a compiled pipeline YAML (or empty)."
  }
}

variable "retrain_run_parameters" {
  description = "Further run parameters of the trigger's runs, e.g. { train_samples = [\"3\", \"4\"], config_overrides = [\"finetune_epochs=20\"] }; samples_uri and samples come from the sample registry."
  type        = any
  default     = {}
}

variable "retrain_enabled" {
  description = "Deploy the retraining trigger (a Cloud Run function on sample uploads)."
  type        = bool
  default     = true
}

variable "retrain_source_dir" {
  description = "Folder with the trigger function's source (main.py, requirements.txt, the project wheel); `make deploy` builds it."
  type        = string
  default     = "../../build/retrain-source"
}

variable "retrain_entry_point" {
  description = "Function in the source's main.py that handles a storage CloudEvent (re-exported from histoxai.pipelines.retrain)."
  type        = string
  default     = "on_sample_uploaded"
}

variable "retrain_runtime" {
  description = "Cloud Run functions runtime for the trigger."
  type        = string
  default     = "python311"
}

variable "retrain_max_instances" {
  description = "Upper bound on concurrent trigger instances (each upload of a READY marker starts at most one run)."
  type        = number
  default     = 3
}

variable "model_registry" {
  description = "Model registry the trigger's runs register into: vertex://PROJECT/REGION (the Vertex AI Model Registry) or a gs:// folder (which the pipeline runner must be able to write); empty means vertex://<project_id>/<region>."
  type        = string
  default     = ""
  validation {
    condition     = var.model_registry == "" || startswith(var.model_registry, "vertex://") || startswith(var.model_registry, "gs://")
    error_message = "model_registry: vertex://PROJECT/REGION, a gs:// folder, or empty."
  }
}

variable "tensorboard_enabled" {
  description = "Create a Vertex AI TensorBoard for the runs' training curves (the trigger passes it to every run)."
  type        = bool
  default     = true
}

variable "experiment" {
  description = "Vertex AI experiment every run of the trigger joins (parameters and metrics side by side); empty means none."
  type        = string
  default     = "histoxai-retrain"
  validation {
    condition     = var.experiment == "" || can(regex("^[a-z0-9][a-z0-9-]{0,127}$", var.experiment))
    error_message = "experiment: lowercase letters, digits and '-', starting with a letter or digit, at most 128 characters (or empty)."
  }
}
