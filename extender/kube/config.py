"""One place that turns ``--kubeconfig`` (or, without it, the pod's service account) into a client
Configuration, for the extender's live mode and the node agent alike."""

from __future__ import annotations

from pathlib import Path

from kubernetes import client, config


def kube_configuration(kubeconfig: str | Path | None) -> client.Configuration:
    configuration = client.Configuration()
    if kubeconfig:
        config.load_kube_config(config_file=str(kubeconfig), client_configuration=configuration)
    else:
        config.load_incluster_config(client_configuration=configuration)
    return configuration
