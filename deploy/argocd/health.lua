-- Argo CD health for filterrelease.dev/FilterRelease. Install it in argocd-cm as
-- resource.customizations.health.filterrelease.dev_FilterRelease (see deploy/argocd/README.md).
--
-- Argo CD's statuses mean: Progressing (still moving), Suspended (waiting for a person),
-- Degraded (failed), Healthy. A status written for an older generation of the spec is not an
-- answer about the current one, so it reads as Progressing until the operator catches up.
local hs = {}
if obj.status == nil or obj.status.observedGeneration == nil then
  hs.status = "Progressing"
  hs.message = "waiting for the operator"
  return hs
end
if obj.metadata.generation ~= nil and obj.status.observedGeneration < obj.metadata.generation then
  hs.status = "Progressing"
  hs.message = "waiting for the operator to observe generation " .. obj.metadata.generation
  return hs
end
local phase = obj.status.phase
local message = obj.status.message or ""
if phase == "Healthy" then
  hs.status = "Healthy"
elseif phase == "Paused" then
  hs.status = "Suspended"
elseif phase == "Degraded" then
  hs.status = "Degraded"
else
  hs.status = "Progressing"
end
hs.message = message
return hs
