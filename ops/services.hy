"Running services: deploy, scale, update, roll back, remove; compose stacks; following a rollout.
Each change shows its plan, asks first (:yes True skips, :dry-run True only shows) and writes
one line to the workspace's audit log, as every change does. Swarm does the work. docs/services.md"

(import pathlib [Path]
        repl.cloud [call CloudError]
        repl.compose [ComposeError load-stack]
        repl.mutate [perform]
        repl.services [deploy-plan follow-rollout service-path stack-plan update-plan]
        ops.cluster [services])

(export :objects [service deploy! scale! update-service! rollback! remove-service! follow
                  stacks stack deploy-stack! remove-stack!
                  secrets configs create-secret! create-config! remove-secret! remove-config!])


(defn service [name]
  "One service whole: image, command, env names, replicas, placement, limits, ports, secrets,
  its tasks and the node each runs on, and `rollout`: the last update's state (converged,
  updating, failed with the task errors, rolling back, rolled back).
    (service \"web\")
    (get (service \"web\") \"rollout\" \"state\")"
  (call "GET" (service-path name)))

(defn _follow-after [answer name follow timeout]
  (if (and follow (= (.get answer "result") "done"))
    (| answer {"rollout" (follow-rollout name :timeout timeout)})
    answer))

(defn deploy! [name image * [replicas None] [command None] [env None] [ports None]
               [networks None] [secrets None] [configs None] [placement None] [limits None]
               [reservations None] [health None] [update None] [mode None] [volumes None]
               [follow True] [timeout 120] [yes False] [dry-run False]]
  "Deploy a new service `name` running `image`; follow it until its tasks run (or fail).

  :replicas 3, :command \"sh -c text\" or a list, :env {\"LEVEL\" \"info\"},
  :ports [\"8080:80\"], :networks [\"backend\"], :secrets [\"db_password\"], :configs [...],
  :placement [\"node.role==worker\"], :limits {\"cpus\" 0.5 \"memory\" \"64M\"}, :reservations,
  :health {\"cmd\" \"wget -qO- localhost\" \"interval\" \"5s\"}, :update {\"parallelism\" 2
  \"failure_action\" \"rollback\"}, :mode \"global\", :volumes [\"data:/data\"].
  The same keys as a system of the cloud spec (docs/services.md).
  Plan, y/N, :yes, :dry-run and the audit log as for promote!; :follow False returns at once.
    (deploy! \"web\" \"local/busybox:1\" :replicas 2 :command \"httpd -f -p 8080\" :yes True)"
  (setv given {"image" image})
  (for [[k v] [["replicas" replicas] ["command" command] ["env" env] ["ports" ports]
               ["networks" networks] ["secrets" secrets] ["configs" configs]
               ["placement" placement] ["limits" limits] ["reservations" reservations]
               ["health" health] ["update" update] ["mode" mode] ["volumes" volumes]]]
    (when (is-not v None) (setv (get given k) v)))
  (setv plan (deploy-plan name given (lfor s (services :fresh True) (get s "name"))))
  (_follow-after
    (perform plan (fn [] (call "POST" "/v1/services" :body {"name" name "definition" given}))
             :yes yes :dry-run dry-run)
    name follow timeout))

(defn update-service! [name * [image None] [command None] [env None] [replicas None]
                       [limits None] [reservations None] [placement None]
                       [follow True] [timeout 120] [yes False] [dry-run False]]
  "Change a running service; Swarm replaces its tasks by its update policy (one at a time,
  pausing at the first task that fails). Follows the rollout and returns how it ended:
  converged, or failed with the tasks' errors (then (rollback! name)).

  :image, :command, :env {\"K\" \"v\"} (None unsets K), :replicas, :limits, :reservations,
  :placement (replaces the constraints). Plan, y/N, :yes, :dry-run, audit log as for promote!.
    (update-service! \"web\" :image \"local/busybox:2\" :yes True)"
  (setv changes {})
  (for [[k v] [["image" image] ["command" command] ["env" env] ["replicas" replicas]
               ["limits" limits] ["reservations" reservations] ["placement" placement]]]
    (when (is-not v None) (setv (get changes k) v)))
  (setv plan (update-plan (service name) changes))
  (_follow-after
    (perform plan (fn [] (call "POST" (service-path name "update") :body {"changes" changes}))
             :yes yes :dry-run dry-run)
    name follow timeout))

(defn scale! [name replicas * [follow True] [timeout 120] [yes False] [dry-run False]]
  "Run `replicas` tasks of a service (0 stops them all, keeping the service).
    (scale! \"web\" 5 :yes True)"
  (setv plan (update-plan (service name) {"replicas" replicas} :action "scale"))
  (_follow-after
    (perform plan (fn [] (call "POST" (service-path name "update")
                               :body {"changes" {"replicas" replicas}}))
             :yes yes :dry-run dry-run)
    name follow timeout))

(defn rollback! [name * [follow True] [timeout 120] [yes False] [dry-run False]]
  "Go back to the service's previous spec (Swarm's own rollback), e.g. after a failed update.
  Refused when the service was never updated. Follows until it is rolled back.
    (rollback! \"web\" :yes True)"
  (import repl.mutate [Plan])
  (setv detail (service name)
        plan (Plan :action "rollback" :target (get detail "name")
                   :changes (if (get detail "can_roll_back")
                              [f"spec: back to the one before the last update ({(get detail "image")} now)"]
                              [])
                   :refusal (when (not (get detail "can_roll_back"))
                              #(f"{name} has no previous spec" "it was not updated since it was created"))))
  (setv answer (perform plan (fn [] (call "POST" (service-path name "rollback")))
                        :yes yes :dry-run dry-run))
  (if (and follow (= (.get answer "result") "done"))
    (| answer {"rollout" (follow-rollout name :timeout timeout
                                         :want #("converged" "rolled back" "failed"))})
    answer))

(defn remove-service! [name * [yes False] [dry-run False]]
  "Remove a service: its tasks stop; named volumes stay on the nodes.
    (remove-service! \"web\" :yes True)"
  (import repl.mutate [Plan])
  (setv detail (service name)
        plan (Plan :action "remove-service" :target (get detail "name")
                   :changes [f"service {(get detail "name")}: REMOVE ({(len (get detail "tasks"))} task(s) stop)"]))
  (perform plan (fn [] (call "DELETE" (service-path name))) :yes yes :dry-run dry-run))

(defn follow [name * [timeout 120]]
  "Follow a service's rollout, one line per change of progress, until it converges, fails
  (with the tasks' errors) or is rolled back; returns the last state.
    (follow \"web\")"
  (follow-rollout name :timeout timeout))

(defn stacks []
  "The stacks deployed (by deploy-stack! or docker stack deploy): name, number of services."
  (call "GET" "/v1/stacks"))

(defn stack [name]
  "What the cloud runs of one stack: its services, networks, configs and secrets (names only)."
  (call "GET" (+ "/v1/stacks/" name)))

(defn deploy-stack! [file * [name None] [yes False] [dry-run False]]
  "Deploy or update a stack from a compose file: services, networks, volumes, configs,
  secrets, deploy (replicas, resources, placement, update_config, restart_policy).
  `name` defaults to the file's folder name. ${VAR} is read from the environment. A key
  hyops cannot run on Swarm is an error naming it, and nothing is deployed. Services the file
  no longer has are removed (the plan says so). Secret values are never shown or logged.
    (deploy-stack! \"compose.yml\" :name \"web\" :yes True)"
  (setv path (Path file)
        name (or name (. (.resolve path) parent name)))
  (try
    (setv body (load-stack path name))
    (except [e ComposeError]
      (raise (CloudError (str e) :code "invalid-compose"
                         :hint "fix every problem listed (docs/services.md lists what is supported)"))))
  (setv current (try (stack name) (except [e CloudError] {}))
        plan (stack-plan name body current))
  (perform plan (fn [] (call "PUT" (+ "/v1/stacks/" name) :body body)) :yes yes :dry-run dry-run))

(defn remove-stack! [name * [yes False] [dry-run False]]
  "Remove a stack: its services, then its networks, configs and secrets.
    (remove-stack! \"web\" :yes True)"
  (import repl.mutate [Plan])
  (setv current (stack name)
        plan (Plan :action "remove-stack" :target name
                   :changes (+ (lfor s (get current "services") f"service {s}: REMOVE")
                               (lfor k ["networks" "configs" "secrets"]
                                     o (get current k)
                                     f"{(cut k 0 -1)} {o}: REMOVE"))))
  (perform plan (fn [] (call "DELETE" (+ "/v1/stacks/" name))) :yes yes :dry-run dry-run))

(defn secrets []
  "The cloud's secrets: name, labels, when made. Swarm never gives a value back."
  (call "GET" "/v1/secrets"))

(defn configs []
  "The cloud's configs: name, labels, when made."
  (call "GET" "/v1/configs"))

(defn _create-object [kind name file value yes dry-run]
  (import base64 repl.mutate [Plan])
  (when (= (is None file) (is None value))
    (raise (CloudError f"create-{kind}!: give the value with :file PATH or :value TEXT (one of them)"
                       :code "bad-request")))
  (setv data (if file (.read-bytes (.expanduser (Path file))) (.encode (str value)))
        plan (Plan :action f"create-{kind}" :target name
                   :changes [f"{kind} {name}: create ({(len data)} bytes{(if (= kind "secret") ", value hidden" "")})"]
                   :args {"from" (if file (str file) "a value given in the workspace")}))
  (perform plan (fn [] (call "POST" f"/v1/{kind}s"
                             :body {"name" name "data" (.decode (base64.b64encode data))}))
           :yes yes :dry-run dry-run))

(defn create-secret! [name * [file None] [value None] [yes False] [dry-run False]]
  "Create a Swarm secret from a file (or a value); services and systems mount it at
  /run/secrets/NAME. The value is never printed, answered or written to the audit log.
  A secret never changes: create NAME-2 and point the service at it.
    (create-secret! \"db_password\" :file \"~/.secrets/db\" :yes True)"
  (_create-object "secret" name file value yes dry-run))

(defn create-config! [name * [file None] [value None] [yes False] [dry-run False]]
  "Create a Swarm config (a file services mount, not secret) from a file or a value.
    (create-config! \"nginx.conf\" :file \"conf/nginx.conf\" :yes True)"
  (_create-object "config" name file value yes dry-run))

(defn _remove-object [kind name yes dry-run]
  (import repl.mutate [Plan])
  (perform (Plan :action f"remove-{kind}" :target name :changes [f"{kind} {name}: REMOVE"])
           (fn [] (call "DELETE" f"/v1/{kind}s/{name}")) :yes yes :dry-run dry-run))

(defn remove-secret! [name * [yes False] [dry-run False]]
  "Remove a secret (Swarm refuses while a service uses it)."
  (_remove-object "secret" name yes dry-run))

(defn remove-config! [name * [yes False] [dry-run False]]
  "Remove a config (Swarm refuses while a service uses it)."
  (_remove-object "config" name yes dry-run))
