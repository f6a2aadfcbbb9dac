"The cloud spec (cloud/*.toml in the workspace) and the autopilot that follows it.

  (spec-diff)              what applying the workspace's spec would change
  (apply-spec! :yes True)  send it, signed (plan, y/N, :dry-run, audit log as every change)
  (autopilot)              what the autopilot sees, wants and did recently, with reasons"

(import repl.cloud [call CloudError]
        repl.mutate [Plan perform]
        repl.session [current]
        wire.spec [SpecError load-spec spec-changes])

(export :objects [spec-diff apply-spec! autopilot local-spec])


(defn local-spec [[folder None]]
  "The workspace's spec from cloud/ (or `folder`), checked; every problem listed if it is wrong."
  (setv folder (or folder (/ (. (current) workspace root) "cloud")))
  (try
    (load-spec folder)
    (except [e SpecError]
      (raise (CloudError (str e)
                         :code "invalid-spec"
                         :hint "fix every problem listed, then (spec-diff) again")))))

(defn _cloud-spec []
  "The spec the cloud follows now, or None when it was never given one."
  (setv answer (call "GET" "/v1/spec"))
  (if (.get answer "given") answer None))

(defn spec-diff [[folder None]]
  "What applying the workspace's spec (cloud/*.toml) would change, one line each.
  An empty list: the cloud already follows it.
    (spec-diff)"
  (spec-changes (_cloud-spec) (local-spec folder)))

(defn apply-spec! [* [folder None] [yes False] [dry-run False]]
  "Give the cloud the workspace's spec (cloud/*.toml): managers, resources, systems.

  The plan lists every change; at a terminal it asks y/N; :yes True acts without asking,
  :dry-run True returns the plan and changes nothing. An invalid spec is refused whole with
  every problem listed, here and again by the agent. Written to the audit log either way.
    (apply-spec! :dry-run True)
    (apply-spec! :yes True)"
  (setv new (local-spec folder)
        old (_cloud-spec)
        body (dfor [k v] (.items new) :if (!= k "source") k v)
        plan (Plan :action "apply-spec"
                   :target (get new "version")
                   :changes (spec-changes old new)
                   :notes [f"from {(.get new "source")}"
                           "the autopilot on the leader acts on it within a second"]
                   :args {"version" (get new "version")
                          "previous" (when old (get old "version"))}))
  (perform plan (fn [] (call "PUT" "/v1/spec" :body body)) :yes yes :dry-run dry-run))

(defn autopilot []
  "What the autopilot on the leader sees (nodes, ready, managers, reachable, quorum, target),
  what it will do next and why, and what it did recently with each reason.
    (autopilot)
    (get (autopilot) \"recent\")"
  (call "GET" "/v1/autopilot"))
