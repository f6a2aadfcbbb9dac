"Changing the cloud's nodes: roles, availability, labels. Each op shows its plan, asks first,
and writes who/what/when/result to the workspace's audit log (.hyops/audit.jsonl)."

(import urllib.parse [quote :as url-quote]
        repl.cloud [call CloudError unknown-name]
        repl.mutate [Plan perform read-audit]
        repl.session [current]
        wire.policy [check-promote check-demote is-manager safety-view]
        ops.cluster [nodes services tasks])

(export :objects [promote! demote! drain! activate! label! remove-node! readmit! removed-nodes
                  audit-log])


;; --- plans: pure functions of node records ---------------------------------------------------

(defn _find [records name]
  (for [n records]
    (when (in name [(get n "name") (get n "id")])
      (return n)))
  (raise (unknown-name "node" name (lfor n records :if (get n "name") (get n "name")))))

(defn _with [records target changes]
  "The records with `target`'s record changed (what the cloud would look like after)."
  (lfor n records (if (is n target) (| n changes) n)))

(defn plan-role [records name role]
  "The plan to make node `name` a `role` (\"manager\" or \"worker\"), checked by Swarm's rules."
  (setv n (_find records name)
        target (get n "name")
        promote (= role "manager")
        refusal ((if promote check-promote check-demote) records target)
        after (_with records n (if promote
                                 {"role" "manager" "reachability" "reachable"}
                                 {"role" "worker" "reachability" None "leader" False}))
        before-view (safety-view records)
        after-view (safety-view after)
        notes [])
  (when (and (!= (get n "role") role) (is refusal None))
    (when (and (get after-view "managers") (= 0 (% (get after-view "managers") 2)))
      (.append notes (+ f"{(get after-view "managers")} managers tolerate no more losses than "
                        f"{(- (get after-view "managers") 1)}: an odd number is the safe one")))
    (when (and (not promote) (get n "leader"))
      (.append notes f"{target} is the leader: the other managers elect a new one first")))
  (Plan :action (if promote "promote" "demote")
        :target target
        :changes (if (= (get n "role") role) [] [f"role: {(get n "role")} -> {role}"])
        :before before-view
        :after after-view
        :notes notes
        :refusal (when refusal #((. refusal reason) (. refusal hint)))))

(defn plan-availability [records name availability running]
  "The plan to set node `name`'s availability; `running` are the task records running there."
  (setv n (_find records name)
        target (get n "name")
        view (safety-view records)
        current (get n "availability")
        notes [])
  (when (and (!= current availability) (= availability "drain"))
    (when running
      (.append notes (+ f"{(len running)} running task(s) move off {target}: "
                        (.join ", " (sorted (sfor t running f"{(get t "service")}.{(get t "slot")}"))))))
    (setv others (lfor o records
                   :if (and (!= (get o "name") target) (= (get o "state") "ready")
                            (= (get o "availability") "active"))
                   o))
    (when (not others)
      (.append notes "no other node is ready and active: these tasks wait unscheduled"))
    (when (is-manager n)
      (.append notes f"{target} stays a manager: draining moves tasks, not Raft votes")))
  (when (and (!= current availability) (= availability "active"))
    (.append notes "running tasks are not moved back; new and rescheduled ones may land here"))
  (Plan :action (if (= availability "drain") "drain" "activate")
        :target target
        :changes (if (= current availability) [] [f"availability: {current} -> {availability}"])
        :before view
        :after view
        :notes notes))

(defn plan-label [records name key value]
  "The plan to set label `key` to `value` on node `name`. hyops.* labels are the agent's own."
  (when (or (not (isinstance key str)) (not (.strip key)) (any (gfor c key (.isspace c))))
    (raise (ValueError f"label key {(hy.repr key)}: use a non-empty string without spaces, e.g. \"zone\"")))
  (when (.startswith key "hyops.")
    (raise (ValueError (+ f"label {key}: hyops.* labels are set by the node's agent "
                          "(its API address and resources); choose another key"))))
  (setv n (_find records name)
        target (get n "name")
        value (str value)
        current (.get (or (get n "labels") {}) key)
        view (safety-view records))
  (Plan :action "label"
        :target target
        :changes (if (= current value) [] [f"label {key}: {(or current "(unset)")} -> {value}"])
        :before view
        :after view
        :args {"key" key "value" value}))


;; --- the ops ----------------------------------------------------------------------------------

(defn _post [target what [body None]]
  "What acting means for a node op: one signed POST to a manager's agent."
  (setv path (+ "/v1/nodes/" (url-quote target :safe "") "/" what))
  (fn [] (call "POST" path :body body)))

(defn _running-on [target]
  "Task records running on node `target`, with their service's name, read through to the
  engine: a plan of a change must not miss a task that started a moment ago."
  (lfor s (services :fresh True)
        t (tasks (get s "name") :fresh True)
        :if (and (= (get t "node") target) (= (get t "state") "running"))
        (| t {"service" (get s "name")})))

(defn promote! [name * [yes False] [dry-run False]]
  "Make a worker a manager, if Swarm's rules allow it (the node is ready, quorum holds).

  Shows the plan (managers, reachable, quorum before -> after) and asks y/N at a terminal;
  :yes True acts without asking, :dry-run True returns the plan and changes nothing.
  Without a terminal, :yes True is needed. Every outcome is written to the audit log.
    (promote! \"node-3\" :dry-run True)
    (promote! \"node-3\" :yes True)"
  (setv plan (plan-role (nodes :fresh True) name "manager"))
  (perform plan (_post plan.target "promote") :yes yes :dry-run dry-run))

(defn demote! [name * [yes False] [dry-run False]]
  "Make a manager a worker, unless that loses quorum or removes the last manager.

  A refusal says why and what to do instead (e.g. promote another node first). Plan, y/N,
  :yes, :dry-run and the audit log as for promote!.
    (demote! \"node-2\" :dry-run True)"
  (setv plan (plan-role (nodes :fresh True) name "worker"))
  (perform plan (_post plan.target "demote") :yes yes :dry-run dry-run))

(defn drain! [name * [yes False] [dry-run False]]
  "Drain a node: Swarm moves its tasks to other nodes and schedules nothing new there.

  The plan lists the running tasks that will move. Managers stay managers. Undo with activate!.
  Plan, y/N, :yes, :dry-run and the audit log as for promote!.
    (drain! \"node-3\" :yes True)"
  (setv records (nodes :fresh True)
        plan (plan-availability records name "drain" (_running-on (get (_find records name) "name"))))
  (perform plan (_post plan.target "availability" {"availability" "drain"})
           :yes yes :dry-run dry-run))

(defn activate! [name * [yes False] [dry-run False]]
  "Make a drained (or paused) node active again: Swarm may schedule tasks there.

  Plan, y/N, :yes, :dry-run and the audit log as for promote!.
    (activate! \"node-3\" :yes True)"
  (setv plan (plan-availability (nodes :fresh True) name "active" []))
  (perform plan (_post plan.target "availability" {"availability" "active"})
           :yes yes :dry-run dry-run))

(defn label! [name key value * [yes False] [dry-run False]]
  "Set label `key` to `value` on a node (services place tasks by labels: node.labels.KEY).

  hyops.* labels belong to the node's agent and are refused. Plan, y/N, :yes, :dry-run and
  the audit log as for promote!.
    (label! \"node-2\" \"zone\" \"eu-1\" :yes True)"
  (setv plan (plan-label (nodes :fresh True) name key value))
  (perform plan (_post plan.target "labels" {"labels" {(get plan.args "key") (get plan.args "value")}})
           :yes yes :dry-run dry-run))

(defn plan-remove [records name running]
  "The plan to take node `name` out of the cloud: drain, wait for its `running` tasks to move,
  demote it if a manager (refused when that loses quorum), remove it."
  (setv n (_find records name)
        target (get n "name")
        manager (is-manager n)
        refusal (when manager (check-demote records target))
        after (lfor o records :if (is-not o n) o)
        changes []
        notes [])
  (when (and (= (get n "state") "ready") (!= (get n "availability") "drain"))
    (.append changes f"availability: {(get n "availability")} -> drain"))
  (when running
    (.append notes (+ f"{(len running)} running task(s) move off {target} first: "
                      (.join ", " (sorted (sfor t running f"{(get t "service")}.{(get t "slot")}"))))))
  (when manager
    (.append changes "role: manager -> worker"))
  (.append changes "remove from the cloud")
  (.append notes (+ f"{target}'s agent gets no join token afterwards, should it keep running: "
                    f"(readmit! \"{target}\") lets it join again"))
  (Plan :action "remove-node"
        :target target
        :changes changes
        :before (safety-view records)
        :after (safety-view after)
        :notes notes
        :refusal (when refusal #((. refusal reason) (. refusal hint)))))

(defn remove-node! [name * [timeout 180] [yes False] [dry-run False]]
  "Take a node out of the cloud cleanly: drain it, wait until Swarm has moved its tasks to
  other nodes, demote it if it is a manager (never below quorum: refused with a reason), then
  remove it. A node that is down is removed as it is. Progress is printed step by step.
  Plan, y/N, :yes, :dry-run and the audit log as for promote!.
    (remove-node! \"node-3\" :yes True)"
  (import time)
  (setv records (nodes :fresh True)
        n (_find records name)
        target (get n "name")
        plan (plan-remove records target (_running-on target)))
  (defn wait-for [what ok]
    (setv deadline (+ (time.monotonic) timeout))
    (while (not (ok))
      (when (> (time.monotonic) deadline)
        (raise (CloudError f"remove-node! {target}: {what} did not happen within {timeout} s"
                           :code "timeout" :hint "(tasks NAME) shows where the tasks are; run it again")))
      (time.sleep 0.5)))
  (defn act []
    (when (and (= (get n "state") "ready") (!= (get n "availability") "drain"))
      (print f"{target}: draining")
      (call "POST" (+ "/v1/nodes/" (url-quote target :safe "") "/availability")
            :body {"availability" "drain"}))
    (when (= (get n "state") "ready")
      (print f"{target}: waiting for its tasks to move")
      (wait-for "moving its tasks away" (fn [] (not (_running-on target)))))
    (when (is-manager n)
      (print f"{target}: demoting")
      (call "POST" (+ "/v1/nodes/" (url-quote target :safe "") "/demote"))
      (wait-for "the demotion" (fn [] (not (is-manager (_find (nodes :fresh True) target))))))
    (print f"{target}: removing")
    (call "DELETE" (+ "/v1/nodes/" (url-quote target :safe ""))))
  (perform plan act :yes yes :dry-run dry-run))

(defn removed-nodes []
  "The nodes an operator removed (remove-node!): their agents may not join again until readmitted."
  (call "GET" "/v1/removed"))

(defn readmit! [name * [yes False] [dry-run False]]
  "Let a node removed with remove-node! join the cloud again (its agent asks for a join token
  every few seconds). Plan, y/N, :yes, :dry-run and the audit log as for promote!.
    (readmit! \"node-3\" :yes True)"
  (setv known (lfor r (removed-nodes) (get r "name")))
  (when (not-in name known)
    (raise (unknown-name "removed node" name known)))
  (perform (Plan :action "readmit" :target name :changes [f"{name}: may join the cloud again"])
           (fn [] (call "POST" (+ "/v1/nodes/" (url-quote name :safe "") "/readmit")))
           :yes yes :dry-run dry-run))

(defn audit-log [[last 20]]
  "The last changes made from this workspace (.hyops/audit.jsonl), oldest first, as records:
  time, user, cloud, action, target, mode (dry-run/ask/confirmed/yes), result, reason.

    (audit-log)       ; the last 20
    (audit-log 100)"
  (lfor e (cut (read-audit (. (current) workspace)) (- last) None)
    {"time" (get e "time")
     "user" (.get (.get e "who" {}) "user")
     "cloud" (.get e "cloud")
     "action" (get e "action")
     "target" (get e "target")
     "mode" (.get e "mode")
     "result" (get e "result")
     "reason" (.get e "reason")}))
