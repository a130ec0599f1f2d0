"""Running Baton on a Ray cluster it did not start: local multi-node clusters, job submission, shared storage."""
