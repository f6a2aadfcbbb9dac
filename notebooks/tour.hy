;; # A tour of the cloud
;;
;; A read-only walk through the cloud this workspace is connected to: who leads, how many
;; managers may be lost, the nodes, the services and what the autopilot thinks. Nothing is
;; changed, so it is safe to run at any time (and from cron, as a daily record).

;; ## The summary
;;
;; `quorum_margin` is how many more managers may be lost before Raft stops every change;
;; `nodes_down` names the nodes that are not ready.

(status)

;; ## The nodes
;;
;; Managers first. `availability` is `drain` for a node that takes no tasks.

(lfor n (nodes)
  {"name" (:name n)
   "role" (:role n)
   "state" (:state n)
   "leader" (:leader n)
   "availability" (:availability n)
   "addr" (:addr n)})

;; ## The managers' safety
;;
;; Every manager should be `reachable`; an unreachable one is what
;; `notebooks/replace-dead-manager.hy` is for.

(lfor n (managers)
  {"name" (:name n) "reachability" (:reachability n) "leader" (:leader n)})

;; ## Services
;;
;; Replicas are desired; running is what runs now.

(lfor s (services)
  {"name" (:name s) "mode" (:mode s) "replicas" (:replicas s) "running" (:running s)
   "image" (:image s)})

;; ## The autopilot
;;
;; What the autopilot on the leader sees, and what it will do next and why.

(setv pilot (autopilot))
(dfor k ["spec" "sees" "next"] :if (in k pilot) k (get pilot k))

;; ## Recent changes
;;
;; The last changes made from this workspace (the audit log).

(audit-log)
