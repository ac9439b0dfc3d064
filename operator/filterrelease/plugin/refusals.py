"""What a person reads when the API server says no: which verb on which resource in which
namespace, and what to do about it, above the server's own words. Pure."""

from __future__ import annotations

from filterrelease.core.render import GROUP

RESOURCE = f"filterreleases.{GROUP}"


def refusal(status: int, message: str, *, verb: str, namespace: str | None, name: str) -> str:
    where = f'in namespace "{namespace}"' if namespace else "in any namespace"
    target = f"{RESOURCE} '{name}'" if name else RESOURCE
    if status == 403:
        return (
            f"error: forbidden: you may not {verb} {RESOURCE} {where} (RBAC). Ask for a Role "
            f'with the "{verb}" verb on "filterreleases" in API group "{GROUP}" there.\n'
            f"  server: {message}"
        )
    if status == 404:
        return f"error: {target} not found {where}.\n  server: {message}"
    if status == 401:
        return (
            f"error: unauthorized: the kubeconfig's credentials were refused.\n  server: {message}"
        )
    if status == 0:
        return f"error: cannot reach the cluster: {message}"
    return f"error: {verb} {target} {where} failed ({status}): {message}"
