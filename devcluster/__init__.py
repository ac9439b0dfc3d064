"""The operator on the local cluster: its CRDs and RBAC installed (install.py), the operator run
as a subprocess under them (operator_process.py), and `make demo` (demo.py, demo_canary.py).

This is what knows about filterrelease; the reusable local cluster it runs on is testbed/
(localcluster, meshagent, meshtraffic), which never imports it. Tests and benchmarks import it
with the repository root on the path (pytest's pythonpath, PYTHONPATH=testbed:. elsewhere).
"""
