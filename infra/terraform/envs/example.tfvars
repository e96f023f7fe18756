# Copy to envs/<env>.tfvars (e.g. envs/dev.tfvars, which git ignores) and set project_id;
# `make deploy env=dev` applies it. Every other line shows a default you may change.
project_id = "my-gcp-project"
region     = "europe-west4"

# name_prefix               = "histoxai"
# pipeline_root_bucket      = ""            # default: <project_id>-histoxai-pipeline-root
# samples_bucket            = ""            # default: <project_id>-histoxai-samples
# nearline_after_days       = 30
# noncurrent_retention_days = 30
# docker_keep_versions      = 10
# retrain_enabled           = true
# retrain_max_instances     = 3
# model_registry            = ""            # default: vertex://<project_id>/<region>
# tensorboard_enabled       = true
# experiment                = "histoxai-retrain"
labels = { app = "histoxai", env = "dev" }
