;; # Rolling restart
;;
;; Restart a system one node at a time: drain the node (Swarm stops the system's tasks there
;; and starts them on other nodes), wait until every system is healthy again, make the node
;; active again, wait once more, then the next node. At no moment is more than one node's
;; share of the system down.
;;
;; Each drain and activate shows its plan and asks y/N at a terminal; run it with `--yes` from
;; cron or CI, or `--dry-run` to see the plans without changing anything.

(defparams
  system None "the system (service) to restart; None: every system"
  timeout 120 "seconds to wait for the systems to be healthy after each drain and activate")

(import time
        repl.cloud [unknown-name])

;; ## What will restart
;;
;; The systems chosen, and the nodes that run their tasks now (in name order).

(setv systems (lfor s (services) :if (or (is system None) (= (:name s) system)) (:name s)))

(when (and system (not systems))
  (raise (unknown-name "system" system (lfor s (services) (:name s)))))

(setv targets
  (sorted (sfor s systems
                t (tasks s)
                :if (and (= (:state t) "running") (:node t))
                (:node t))))

{"systems" systems "nodes" targets}

;; ## Healthy means
;;
;; Every chosen system runs as many tasks as it wants, and none of them on the node that was
;; just drained.

(defn running-on [node]
  "How many tasks of the chosen systems run on `node`."
  (len (lfor s systems t (tasks s) :if (and (= (:node t) node) (= (:state t) "running")) t)))

(defn healthy? []
  "Every chosen system runs all the tasks it wants."
  (all (gfor s (services) :if (in (:name s) systems) (= (:running s) (:replicas s)))))

;; ## One node at a time
;;
;; Under `--dry-run` the drains and activates return their plans and nothing is waited for.

(lfor node targets
  (do
    (setv started (time.monotonic))
    (setv drained (drain! node))
    (when (not (dry-run?))
      (wait-for f"the systems to leave {node} and be healthy"
                (fn [] (and (= 0 (running-on node)) (healthy?)))
                :timeout timeout))
    (setv activated (activate! node))
    (when (not (dry-run?))
      (wait-for "the systems to be healthy" healthy? :timeout timeout))
    {"node" node
     "drain" (:result drained)
     "activate" (:result activated)
     "seconds" (round (- (time.monotonic) started) 1)}))

;; ## After
;;
;; Every node should be active again and every system healthy.

(lfor n (nodes) {"name" (:name n) "state" (:state n) "availability" (:availability n)})

(lfor s (services) :if (in (:name s) systems)
  {"name" (:name s) "replicas" (:replicas s) "running" (:running s)})
