"""The local cloud: namespaced dockerd nodes with their agents on one host, for development and
the tests (`hyops up`, `hyops down`). It starts agents as processes; it never imports the agent's
server side, only the shared wire protocol and the Docker engine adapter.

Its modules, each one concern, lowest first: `host` (commands, processes, locks, mounts),
`network` (namespaces, bridge, addresses, veths), `image` (the busybox image), `keys` (keys and
the trust file), `cloud` (`LocalCloud`: up, down, restart, the record), `commands` (`hyops up`,
`hyops down`)."""
