"""The mesh agent of the local cluster: istiod's WasmPlugin selection and istio-agent's module
fetching, emulated, in front of a real Envoy per meshed pod. See meshagent.agent and, for the
files and metrics it produces, meshagent.layout."""

from meshagent.agent import MeshAgent

__all__ = ["MeshAgent"]
