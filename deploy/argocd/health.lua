-- Argo CD health check for every compute.threatwinds.com kind that reports kstatus conditions
-- (ComputeInstanceAction, ComputeFleetAction, ComputePowerSchedule, ComputeMaintenanceWindow,
-- ComputeDisruptionBudget). Register it in argocd-cm under resource.customizations.health.compute.threatwinds.com_<Kind>
-- (see README.md). Plain Lua 5.1 (Argo CD runs gopher-lua); `obj` is the live object.
--
--   status.observedGeneration < metadata.generation  -> Progressing (the operator has not seen the spec yet)
--   spec.suspend with Ready reason Suspended           -> Suspended
--   Stalled=True                                      -> Degraded (message from the condition)
--   Reconciling=True, reason Paused                   -> Suspended (a fleet with spec.paused)
--   Reconciling=True, reason WaitingForWindow         -> Suspended (a maintenance window holds the action back)
--   Reconciling=True                                  -> Progressing
--   Ready=True                                        -> Healthy (also for a declared `stopped` that is stopped)
--   status.phase Failed (without the above)           -> Degraded (status.message)
--   no status / no conditions yet / anything else     -> Progressing
local hs = {}

local function condition(conditions, condType)
  if conditions == nil then
    return nil
  end
  for _, c in ipairs(conditions) do
    if c.type == condType then
      return c
    end
  end
  return nil
end

local function describe(c, fallback)
  if c.message ~= nil and c.message ~= "" then
    return c.message
  end
  if c.reason ~= nil and c.reason ~= "" then
    return c.reason
  end
  return fallback
end

local generation = nil
if obj.metadata ~= nil then
  generation = obj.metadata.generation
end

if obj.status == nil then
  hs.status = "Progressing"
  hs.message = "Waiting for the operator to report status"
  return hs
end

local observed = obj.status.observedGeneration
if generation ~= nil and (observed == nil or observed < generation) then
  hs.status = "Progressing"
  hs.message = "Waiting for the operator to observe the latest spec"
  return hs
end

local conditions = obj.status.conditions

local stalled = condition(conditions, "Stalled")
if stalled ~= nil and stalled.status == "True" then
  hs.status = "Degraded"
  hs.message = describe(stalled, "Stalled")
  return hs
end

local reconciling = condition(conditions, "Reconciling")
if reconciling ~= nil and reconciling.status == "True" then
  if reconciling.reason == "Paused" or reconciling.reason == "WaitingForWindow" then
    hs.status = "Suspended"
    hs.message = describe(reconciling, reconciling.reason)
    return hs
  end
  hs.status = "Progressing"
  hs.message = describe(reconciling, "Reconciling")
  return hs
end

local ready = condition(conditions, "Ready")
if ready ~= nil and ready.reason == "Suspended" and obj.spec ~= nil and obj.spec.suspend == true then
  hs.status = "Suspended"
  hs.message = describe(ready, "Suspended")
  return hs
end
if ready ~= nil and ready.status == "True" then
  -- A Ready condition written for an older generation says nothing about the current spec.
  if generation ~= nil and ready.observedGeneration ~= nil and ready.observedGeneration < generation then
    hs.status = "Progressing"
    hs.message = "Waiting for the operator to observe the latest spec"
    return hs
  end
  hs.status = "Healthy"
  hs.message = describe(ready, "Ready")
  return hs
end

if obj.status.phase == "Failed" then
  hs.status = "Degraded"
  hs.message = obj.status.message or "Failed"
  return hs
end

hs.status = "Progressing"
if ready ~= nil then
  hs.message = describe(ready, "Waiting for the Ready condition")
elseif obj.status.message ~= nil and obj.status.message ~= "" then
  hs.message = obj.status.message
else
  hs.message = "Waiting for the Ready condition"
end
return hs
