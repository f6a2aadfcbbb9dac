;; # Collect logs
;;
;; Every node's logs into one folder under `logs/`, then opened in the editor: the output of
;; the containers on each node (as `(logs NODE)` gives it, each line with its time and
;; container) and each node's own `agent.log` and `dockerd.log`, fetched over SSH with the
;; node's host key checked. Files are written mode 0600: logs may hold secrets.
;;
;; A node that is down does not stop the collection: the table says which sources failed.

(defparams
  since "1h" "how far back: a duration (30s, 10m, 2h, 1d), a Unix time or an RFC 3339 time"
  tail 0 "at most this many lines of each container; 0: every line since `since`"
  node-files True "also fetch each node's agent.log and dockerd.log over SSH")

(import datetime [datetime UTC]
        pathlib [Path]
        repl.editor [open-in-editor write-private EditorError]
        repl.session [current])

;; ## The folder
;;
;; `logs/collected-TIME/`, one per run.

(setv folder (/ (. (current) workspace logs-dir)
                (+ "collected-" (.strftime (datetime.now UTC) "%Y%m%dT%H%M%SZ"))))

(str folder)

;; ## The containers' output, node by node

(setv everyone (nodes))

(lfor n everyone
  (do
    (setv got (logs (:name n) :since since :tail (or tail None))
          path (write-private (/ folder f"{(:name n)}.containers.log") (.text got)))
    {"node" (:name n)
     "lines" (len (:lines got))
     "file" path.name
     "failed" (.join "; " (gfor f (:failed got) f"{(:source f)}: {(:error f)}"))}))

;; ## The nodes' own log files
;;
;; Over SSH (SFTP) from each node that is ready.

(if (not node-files)
  "not asked for (--param node-files=false)"
  (lfor n everyone
        name ["agent.log" "dockerd.log"]
    (if (!= (:state n) "ready")
      {"node" (:name n) "file" name "result" f"skipped: the node is {(:state n)}"}
      (try
        (setv fetched (Path (node-file (:name n) name))
              copy (write-private (/ folder f"{(:name n)}.{name}") (.read-text fetched)))
        {"node" (:name n) "file" copy.name "result" f"{(len (.splitlines (.read-text copy)))} lines"}
        (except [e Exception]
          {"node" (:name n) "file" name "result" f"failed: {e}"})))))

;; ## Open the folder in the editor
;;
;; The editor is `$HYOPS_EDITOR`, else `$VISUAL`, else `$EDITOR`; with none set, the folder
;; is still there and its path is the answer.

(try
  (open-in-editor folder)
  (str folder)
  (except [e EditorError]
    (print f"not opened: {e}")
    (str folder)))
