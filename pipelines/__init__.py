"""The KFP pipeline: definition, compile, local run, submission."""
