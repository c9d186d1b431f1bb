"""The kube-scheduler extender service: wire types, the aiohttp app, metrics and the CLI."""
