"""The local cloud: namespaced dockerd nodes with their agents on one host, for development and
the tests (`hyops up`, `hyops down`). It starts agents as processes; it never imports the agent's
server side, only the shared wire protocol and the Docker engine adapter."""
