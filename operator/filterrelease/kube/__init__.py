"""The only importer of the Kubernetes client: every API call of the operator goes through here."""
