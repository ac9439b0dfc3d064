"""Traffic and telemetry for the simulated mesh: load through the sidecars, Istio's standard
metrics from their access logs (served to Prometheus), and their logs for `kubectl logs`.

Works from the per-pod files the mesh agent writes under `<workdir>/<namespace>/<pod>/`
(see podfiles.py), so every part can run against synthetic directories.
"""
