"""The artifact types of the register step. Kept apart from component.py: a task imports this module
in KFP's runtime mode, where `kfp.dsl` offers the artifact classes but not the component decorator."""

from kfp.dsl import Artifact


class VertexModel(Artifact):
    """A model version in the Vertex AI Model Registry: the Vertex AI pipeline UI links an artifact of
    this type (URI https://REGION-aiplatform.googleapis.com/v1/<resource>, metadata resourceName) to
    the model's page. Defined here rather than taken from google-cloud-pipeline-components, which
    would pull google-cloud-aiplatform back to 1.x."""

    schema_title = "google.VertexModel"
    schema_version = "0.0.1"
