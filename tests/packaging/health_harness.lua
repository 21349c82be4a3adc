-- Runs an Argo CD health check the way Argo CD does: the check is a chunk that sees the live object as the
-- global `obj` and returns { status = ..., message = ... }.
--
--   lua5.4 tests/packaging/health_harness.lua deploy/argocd/health.lua OBJECT.lua   (or - for stdin)
--
-- OBJECT.lua is a chunk returning the object as a Lua table (tests/packaging_argocd.rs writes it from JSON).
-- Prints two lines: the status, then the message.
local check_path, object_path = arg[1], arg[2]
if check_path == nil or object_path == nil then
  io.stderr:write("usage: health_harness.lua HEALTH.lua OBJECT.lua\n")
  os.exit(2)
end

-- "-" reads the object chunk from stdin.
if object_path == "-" then
  obj = assert(load(io.read("a"), "=object"))()
else
  obj = dofile(object_path)
end

local check, err = loadfile(check_path)
if check == nil then
  io.stderr:write("cannot load " .. check_path .. ": " .. tostring(err) .. "\n")
  os.exit(3)
end

local ok, hs = pcall(check)
if not ok then
  io.stderr:write("health check raised an error: " .. tostring(hs) .. "\n")
  os.exit(4)
end
if type(hs) ~= "table" or type(hs.status) ~= "string" then
  io.stderr:write("health check did not return a table with a string status\n")
  os.exit(5)
end
io.write(hs.status, "\n", tostring(hs.message or ""), "\n")
