;; # Replace a dead manager
;;
;; When a manager's node is gone (its engine down or cut off), the managers are one vote
;; short: one more loss and Raft stops every change to the cloud. This runbook demotes the dead
;; manager (Swarm allows it while the others keep a quorum) and promotes a ready worker in its
;; place, then waits until the new manager is reachable.
;;
;; The autopilot does the same on its own when the cloud follows a spec; this is the by-hand
;; way. Each change shows its plan and asks y/N at a terminal; `--yes` for cron or CI,
;; `--dry-run` to see the plans only.

(defparams
  dead None "the dead manager's node name; None: the one manager that is not reachable"
  replacement None "the worker to promote; None: the ready, active worker with the most CPUs"
  timeout 120 "seconds to wait for each change to show in the cloud")

;; ## The managers now

(setv before (nodes))

(lfor n before :if (= (:role n) "manager")
  {"name" (:name n) "state" (:state n) "reachability" (:reachability n) "leader" (:leader n)})

;; ## Which manager is dead
;;
;; With no `dead` parameter there must be exactly one unreachable manager; with none, there
;; is nothing to do (the rest of the runbook then changes nothing).

(setv unreachable (lfor n before
                        :if (and (= (:role n) "manager") (!= (:reachability n) "reachable"))
                        (:name n)))

(setv victim
  (cond
    dead (do
           (setv n (node dead))
           (cond
             (!= (:role n) "manager")
               (raise (ValueError f"{dead} is not a manager (it is a {(:role n)}): nothing to replace"))
             (= (:reachability n) "reachable")
               (raise (ValueError (+ f"{dead} is a reachable manager: to take a live manager out "
                                     f"use (demote! {(hy.repr dead)}) instead"))))
           (:name n))
    (= (len unreachable) 1) (get unreachable 0)
    (not unreachable) None
    True (raise (RuntimeError (+ f"{(len unreachable)} managers are unreachable "
                                 f"({(.join ", " unreachable)}): name the one to replace "
                                 "with --param dead=NAME")))))

(if victim
  f"{victim} is the dead manager"
  "every manager is reachable: nothing to replace")

;; ## Its replacement
;;
;; A ready, active worker; the one with the most CPUs (then memory) unless named.

(setv spare
  (cond
    (not victim) None
    replacement (:name (node replacement))
    True (:name (max (lfor n before
                           :if (and (= (:role n) "worker") (= (:state n) "ready")
                                    (= (:availability n) "active"))
                           n)
                     :key (fn [n] #((or (:cpus n) 0) (or (:memory n) 0)))
                     :default {"name" None}))))

(cond
  (not victim) "nothing to replace"
  spare f"{spare} will take {victim}'s place"
  True (+ "no ready, active worker to promote: the dead manager is still demoted; "
          "add a node and promote it"))

;; ## Demote the dead manager, promote the replacement
;;
;; Demoting first keeps the number of managers odd at the end, as the autopilot does.

(when victim
  (demote! victim))

(when (and victim (not (dry-run?)))
  (wait-for f"{victim} to be a worker"
            (fn [] (= (:role (node victim)) "worker"))
            :timeout timeout))

(when spare
  (promote! spare))

(when (and spare (not (dry-run?)))
  (wait-for f"{spare} to be a reachable manager"
            (fn [] (= (:reachability (node spare)) "reachable"))
            :timeout timeout))

;; ## The managers after

(lfor n (managers)
  {"name" (:name n) "state" (:state n) "reachability" (:reachability n) "leader" (:leader n)})
