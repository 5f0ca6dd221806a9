-- archon's demo: a handful of real processes to watch.
--
--   cargo run --release -p archon -- --demo --socket /tmp/archon-demo.sock
--   (--demo runs this file as built into archon; --config examples/demo.lua reads it from here)
--   ARCHON_SOCKET=/tmp/archon-demo.sock target/release/archonctl status
--
-- What to look for: `setup` runs once and is done before `db` starts; `db` says it is ready
-- over NOTIFY_SOCKET (systemd's protocol) a second after it starts, and only then does `web`
-- (which requires it) start; `cache` says it is ready with a line on fd 3 (s6's convention);
-- `flaky` crashes every two seconds: restarted at once the first time, then after 1 s, 2 s,
-- 4 s... (state `backoff`), and after more than 6 restarts within a minute it is `failed`.
-- `archonctl stop db` stops `web` first; `archonctl start web` brings both back.

task "setup" {
  argv = {"/bin/sh", "-c", "echo 'setup: preparing'; sleep 0.5; echo 'setup: done'"},
}

service "db" {
  argv = {"/bin/sh", "-c",
          "sleep 1; systemd-notify --ready --status='accepting connections'; exec sleep infinity"},
  ready = "notify",
  after = {"setup"},
}

service "web" {
  argv = {"/bin/sh", "-c", "echo \"web: up, with db ready ($ARCHON_SERVICE)\"; exec sleep infinity"},
  requires = {"db", "setup"},
  stop_timeout = "3s",
}

service "cache" {
  argv = {"/bin/sh", "-c", "sleep 0.5; echo ready >&3; exec sleep infinity"},
  ready = "fd",
  ready_fd = 3,
}

service "flaky" {
  argv = {"/bin/sh", "-c", "echo 'flaky: up for two seconds'; sleep 2; exit 3"},
  restart = "on-failure",
  backoff = {initial = 1, max = 16, multiplier = 2, reset_after = 30},
  flap = {restarts = 6, within = 60},
}

for i = 1, 3 do
  service("worker" .. i) {
    argv = {"/bin/sleep", "infinity"},
    after = {"web"},
  }
end
