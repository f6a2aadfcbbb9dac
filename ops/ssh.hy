"SSH to the cloud's nodes: their own log files, commands on them, tunnels to their agents.
Host keys are checked against the cloud's recorded known_hosts (docs/logs-and-ssh.md); the SSH
client is repl/ssh.py, owned by the cloud connection."

(import repl.cloud [call connection agent-url CloudError unknown-name]
        repl.editor [safe-name]
        repl.session [current]
        wire.names [did-you-mean])

(export :objects [node-file node-run tunnel! tunnels])


(defn _shell-for [node]
  "The Session and its SSH shell, with `node`'s address known (asked of the cloud once)."
  (setv session (current)
        shell (.shell (connection session)))
  (when (not-in node shell.targets)
    (setv known (dfor n (call "GET" "/v1/nodes") (get n "name") n))
    (when (not-in node known)
      (setv hint (did-you-mean node known))
      (raise (LookupError (+ f"no node named {(hy.repr node)}"
                             (if hint f": {hint}" f" (nodes: {(.join ", " known)})")))))
    (.remember shell node (get known node "addr")))
  #(session shell))

(defn node-file [node name]
  "Fetch a node's own log file over SSH (SFTP), e.g. (node-file \"node-2\" \"dockerd.log\").

  The node's agent serves the *.log files of its log folder (agent.log, dockerd.log) read-only.
  The file lands in the workspace at logs/NODE/NAME (mode 0600); the answer is its path, so
  (edit (node-file \"node-2\" \"agent.log\")) opens it. The node's SSH host key is checked
  against the cloud's recorded known_hosts; an unknown or changed key is refused."
  (setv [session shell] (_shell-for node)
        dest (/ (. session workspace logs-dir) (safe-name node) (safe-name name)))
  (str (.run session (.fetch shell node name dest))))

(defn node-run [node command * [timeout 60]]
  "Run a shell command on a node over SSH; the answer is {\"node\" \"exit\" \"stdout\" \"stderr\"}.

  For what only the machine can tell: (node-run \"node-2\" \"uptime\"). Operator keys only;
  the node's host key is checked against the cloud's recorded known_hosts."
  (setv [session shell] (_shell-for node))
  (.run session (.run shell node command :timeout timeout)))

(defn tunnel! [node]
  "Open an SSH tunnel to a node's agent API; the answer holds the local URL that reaches it.

    (tunnel! \"node-2\")  ; => {\"node\" \"node-2\"  \"local\" \"http://127.0.0.1:40123\"  …}

  For a browser or curl on this machine (the agent's OpenAPI page is at LOCAL/docs) where only
  the node's SSH port is reachable. The tunnel stays open until the session connects to another
  cloud or ends; (tunnels) lists the open ones. (connect! NAME :via \"ssh\") sends all of the
  workspace's requests this way."
  (setv nodes (call "GET" "/v1/nodes")
        record (next (gfor n nodes :if (= (get n "name") node) n) None))
  (when (is record None)
    (raise (unknown-name "node" node (lfor n nodes (get n "name")))))
  (setv api (agent-url record))
  (when (is api None)
    (raise (CloudError f"{node} has no API address on record (its hyops.api label is missing)"
                       :hint "is its agent running? (nodes) shows its labels")))
  (setv session (current))
  {"node" node "to" api "local" (.run session (.tunnel (connection session) api))})

(defn tunnels []
  "The open SSH tunnels to agents: {\"to\" API-URL \"local\" LOCAL-URL} each."
  (.tunnels (connection)))
