"Questions about the cloud's state. Answers are plain data: dicts with string keys, lists of them."

(import repl.cloud [call])


(defn nodes []
  "The cloud's nodes, managers first: name, role, state, leader, addr, reachability, cpus, memory, labels.

  Each node is a dict with string keys, so `(:role n)` works:
    (->> (nodes) (filter (fn [n] (= (:role n) \"manager\"))) (list))"
  (call "GET" "/v1/nodes"))
