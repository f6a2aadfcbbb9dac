"Questions about the cloud's state. Answers are plain data: dicts with string keys, lists of them."

(import urllib.parse [quote :as url-quote]
        repl.cloud [call describe connect unknown-name watch :as follow-changes]
        wire.policy [is-manager safety-view])

(export :objects [cloud connect! nodes node managers leader services tasks status watch])


(defn cloud []
  "What this workspace is connected to: name, bootstrap list, the manager answering, cloud id.

  Asks a manager, so the answer is current:
    (cloud)  ; => {\"name\" \"local\"  \"manager\" \"node-1\"  \"cloud_id\" \"c-…\" …}"
  (describe))

(defn connect! [target * [key None] [via None]]
  "Connect to another cloud: a recorded name, or a bootstrap list URL signed with the operator key.

    (connect! \"staging\")                          ; recorded in .hyops/clouds/staging/
    (connect! \"git+file:///srv/lists/prod.git\")   ; any list: git+…, file://, http(s)://
    (connect! \"http://lists.example/prod\" :key \"/path/to/operator_ed25519\")
    (connect! \"staging\" :via \"ssh\")             ; only the nodes' SSH ports are reachable

  With :via \"ssh\" every request to an agent goes through an SSH tunnel to its node (host
  keys checked against the cloud's known_hosts); (tunnels) shows them. Without :via, the
  cloud record's `via` (else \"http\").
  The new cloud must answer first; a wrong name, URL, key or route leaves the current
  connection as it was. Returns what (cloud) returns for the new connection."
  (connect target :key key :via via))

(defn _fresh [fresh]
  "The query that makes an agent read through to the engine instead of its live model."
  (when fresh {"fresh" "true"}))

(defn nodes [* [fresh False]]
  "The cloud's nodes, managers first, as records: name, role, state, leader, availability, addr.

  Also: id, reachability (managers), cpus, memory, labels, engine version, api.
  Each node is a dict with string keys, so `(:role n)` works:
    (->> (nodes) (filter (fn [n] (= (:role n) \"manager\"))) (list))
  Reads come from the session's warm copy or the agent's live model, which follow the engine
  within a couple of seconds; :fresh True asks the engine itself (the ops that change the cloud
  plan from such reads)."
  (call "GET" "/v1/nodes" :params (_fresh fresh)))

(defn node [name]
  "One node's record, by name or id: (node \"node-2\"). An unknown name suggests the close ones."
  (setv all (nodes))
  (for [n all]
    (when (in name [(get n "name") (get n "id")])
      (return n)))
  (raise (unknown-name "node" name (lfor n all :if (get n "name") (get n "name")))))

(defn managers []
  "The managers' records (leader included), as (nodes) gives them."
  (lfor n (nodes) :if (is-manager n) n))

(defn leader []
  "The Raft leader's node record, or None while the managers have no leader."
  (next (gfor n (nodes) :if (get n "leader") n) None))

(defn watch [[kinds "nodes"] * [seconds 60] [changes None]]
  "Follow the cloud's changes as they happen: one line per change, until `seconds` have passed
  or `changes` were shown (Ctrl-C stops it too). Returns how many changes were shown.
  kinds: \"nodes\", \"services\", \"tasks\", \"info\", \"containers\", or a list of them.

    (watch)                                ; the nodes, for a minute
    (watch [\"nodes\" \"services\"] :seconds 300)
    (watch \"nodes\" :changes 1)             ; until the next change

  Lines look like `12:01:07 nodes: node-2: role 'worker' -> 'manager'`. While a session runs,
  it keeps its own copy of the nodes and services warm the same way: a (nodes) after the first
  is answered without a round trip, and a change made from here drops the copy until it is
  read again."
  (follow-changes kinds :seconds seconds :changes changes))

(defn services [* [fresh False]]
  "The cloud's services: name, id, mode, replicas (desired), running, image, labels.
  :fresh True reads through to the engine, as for (nodes)."
  (call "GET" "/v1/services" :params (_fresh fresh)))

(defn tasks [service * [fresh False]]
  "The tasks of one service (name or id): slot, node, state, desired state, message, container.
  An unknown service suggests the close ones. :fresh True reads through to the engine, as for
  (nodes)."
  (call "GET" (+ "/v1/services/" (url-quote (str service) :safe "") "/tasks")
        :params (_fresh fresh)))

(defn _summary [about records services]
  "The (status) summary from a (cloud) answer, node records and service records (pure).
  The safety numbers are `wire.policy.safety_view`, the view the autopilot shows too."
  (setv view (safety-view records)
        workers (lfor n records :if (not (is-manager n)) n)
        lead (next (gfor n records :if (get n "leader") n) None))
  {"cloud" (get about "name")
   "cloud_id" (get about "cloud_id")
   "leader" (when lead (get lead "name"))
   "managers" (+ f"{(get view "reachable")}/{(get view "managers")} reachable"
                 (if (get view "joining")
                     f", {(.join ", " (get view "joining"))} joining"
                     "")
                 (if (get view "leftover")
                     f", {(.join ", " (get view "leftover"))} a worker still in Raft"
                     ""))
   "quorum" (get view "quorum")
   "quorum_margin" (get view "margin")
   "workers" (len workers)
   "workers_ready" (len (lfor n workers :if (= (get n "state") "ready") n))
   "nodes_down" (lfor n records :if (!= (get n "state") "ready") (get n "name"))
   "services" (lfor s services
                {"name" (get s "name")
                 "mode" (get s "mode")
                 "replicas" f"{(get s "running")}/{(get s "replicas")}"})})

(defn status []
  "One summary of the cloud: id, leader, managers reachable/total, quorum margin, workers, services.

  quorum_margin is how many more managers may be lost before Raft stops every change (a
  manager promoted a moment ago counts once it is in Raft: until then it shows as joining; a
  worker still in Raft, left over by a demotion, counts as the engines count it); services
  show their replicas as running/desired; nodes_down names the nodes that are not ready.

    (:quorum-margin (status))  ; 0: losing one more manager stops every change"
  (_summary (cloud) (nodes) (services)))
