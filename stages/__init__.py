"""Thin DVC stage scripts: read params.yaml, call the library, write the declared outputs, log to MLflow."""
