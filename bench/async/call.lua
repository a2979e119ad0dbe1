-- wrk script for bench/async: a POST of a small JSON event to the
-- function's URL; with LAMPYR_EVENT=1 in the environment it asks for an
-- asynchronous invocation (202). done() is bench/warm's report hook.
wrk.method = "POST"
wrk.body = '{"n": 1}'
wrk.headers["content-type"] = "application/json"
if os.getenv("LAMPYR_EVENT") == "1" then
  wrk.headers["x-lampyr-invocation-type"] = "event"
end

local here = debug.getinfo(1, "S").source:match("^@(.*/)") or "./"
dofile(here .. "../warm/report.lua")
