"""The pps-sidecar benchmark (bench/run) and profile (bench/profile): Python 3, standard library only.

Where to look:
  rows.py           the table of rows: which peer, which body, which ids, what the app must see
  peers/            one file per server: its configuration, how it starts, its sanity checks
  wrk.py            the load (wrk + sign.lua), the webhook ids, the checks on every answer
  measure.py        one measured run: CPU (user and system) from /proc, noise, the app's counter
  syscalls.py       system calls per request (perf stat on syscall tracepoints, or strace -c)
  memory.py         RSS per remembered id; hmac_rate.py: HMAC-SHA256 against openssl
  report.py         the table, the targets, the breakdown
  run.py            the order of the phases; settings.py: the environment variables
  frame.py          what bench/run and bench/profile share: settings, installs, builds, errors, cleanup
  profile.py        bench/profile: the sidecar row under perf or callgrind, grouped by components.py
  context.py, host.py, build.py   the temporary directory and processes, /proc and apt-get, cargo
"""
