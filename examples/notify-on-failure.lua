-- Notify someone when a service fails: the "e-mail on worker error".
--
--   archon --config examples/notify-on-failure.lua --socket /tmp/archon-notify.sock
--
-- `worker` does some work and then fails (exit 1). Each time a service's process fails (it
-- ends unasked and not cleanly: archon restarts it, backs off, or gives up on it) the handler
-- below runs the notification command with the service's name and what happened:
--
--   $ARCHON_NOTIFY <service> <reason>
--
-- ARCHON_NOTIFY is read from archon's environment when the handler runs; without it the
-- message is mailed to root with mail(1). The command runs on its own (archon does not wait
-- for it), and shows in `archonctl events` as a daemon started by `lua:<line>`.

service "worker" {
  argv = {"/bin/sh", "-c", "echo 'worker: processing the queue'; sleep 1; "
                        .. "echo 'worker: lost the database connection' >&2; exit 1"},
  restart = "on-failure",
  backoff = {initial = 5, max = 60},
  flap = {restarts = 3, within = 600},
}

local function notify(service, reason)
  local command = archon.env("ARCHON_NOTIFY")
  if command then
    archon.run{command, service, reason}
  else
    archon.run{"/bin/sh", "-c", 'printf "%s\\n" "$2" | mail -s "archon: $1 failed" root',
               "notify", service, reason}
  end
end

-- A service's or task's process that ended unasked, and not cleanly. (Not the notification
-- commands themselves: they are daemons, and one that fails must not notify again.)
on("exit|service|task", "*", function(ev)
  if ev.old ~= "stopping" and (ev.signal ~= nil or (ev.code or 0) ~= 0) then
    notify(ev.subject, ev.reason)
  end
end)

-- A unit given up on without a process ending (it cannot be started at all).
on("fail", "*", function(ev)
  notify(ev.subject, ev.reason)
end)
