"""The only modules that import the Kubernetes client: the live cluster feed and the binder."""
