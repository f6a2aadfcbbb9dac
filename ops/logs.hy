"Logs from every node at once, a node's own log files over SSH, and the operator's editor."

(import asyncio
        concurrent.futures
        difflib
        os
        queue
        re
        sys
        zlib
        collections [deque]
        collections.abc [Mapping]
        pathlib [Path]
        urllib.parse [quote :as url-quote]
        repl.cloud [call connection CloudError unknown-name]
        repl.editor [edit-value safe-name]
        repl.render [redact-text]
        repl.session [current])

(export :objects [logs tail! node-file node-run tunnel! tunnels edit LogResult])

(setv _COLORS [36 33 32 35 34 31 96 93 92 95 94 91])
(setv _KEEP 100000)       ; lines a follow keeps for its answer (the screen gets every one)
(setv _READ-TIMEOUT 30)   ; seconds a node may stay silent before a (non-follow) fetch gives up
(setv _API-PORT 7300)


;; --- pure helpers: how a line looks, in which order lines go ------------------------------------

(defn _short-container [rec]
  "`web.1` for a replica's container `web.1.<task id>`, `web` for a global service's
  `web.<node id>.<task id>` (the node is in the prefix already); others keep their name."
  (setv name (or (.get rec "container") "?")
        service (.get rec "service"))
  (when (not (and service (.startswith name (+ service "."))))
    (return name))
  (setv slot (get (.split (cut name (+ (len service) 1) None) ".") 0))
  (if (.isdigit slot) (+ service "." slot) service))

(defn _source [rec]
  "Where a line comes from, as its prefix shows it: node and container."
  (+ (or (.get rec "node") "?") " " (_short-container rec)))

(defn _paint [text source color]
  (if color
    (do
      (setv code (get _COLORS (% (zlib.crc32 (.encode source)) (len _COLORS))))
      f"\x1b[{code}m{text}\x1b[0m")
    text))

(defn _line [rec [width 0] [color False] [timestamps False]]
  "One record as a printed line: `node-1 web.1 │ the line` (stern-like prefix per source)."
  (setv source (_source rec)
        prefix (_paint (.ljust source width) source color)
        stamp (if timestamps (+ (or (.get rec "time") "") " ") ""))
  f"{stamp}{prefix} │ {(.get rec "line" "")}")

(defn _time-key [stamp]
  "Docker's RFC 3339 times trim trailing zeros of the fraction; pad it so times sort as text."
  (setv text (.rstrip (or stamp "") "Z")
        [head dot fraction] (.partition text "."))
  (+ head "." (.ljust fraction 9 "0")))

(defn _use-color []
  (and (.isatty sys.stdout) (not (os.environ.get "NO_COLOR"))))


(defclass LogResult [Mapping]
  "Log lines from many sources, and the sources that failed.

  Plain data underneath: a read-only mapping of \"target\", \"lines\" (records with \"node\",
  \"container\", \"service\", \"task\", \"stream\", \"time\", \"line\") and \"failed\" (records with
  \"source\" and \"error\"). So `(:lines *1)`, `(:failed *1)` and `(dict *1)` work. It prints as
  prefixed lines (`node container │ line`) followed by a `;;` summary naming failed sources;
  secret-shaped text (join tokens, private keys) is masked in what is printed."

  (setv suffix ".log")

  (defn __init__ [self target lines failed [followed False]]
    (setv self._data {"target" target "lines" (list lines) "failed" (list failed)}
          self.followed followed))

  (defn __getitem__ [self key] (get self._data key))
  (defn __iter__ [self] (iter self._data))
  (defn __len__ [self] (len self._data))

  (defn [property] file-name [self]
    "The stable file `(edit ...)` writes these lines to, under logs/."
    (safe-name (str (get self "target"))))

  (defn summary [self]
    "One line: how many lines from how many sources, and which sources failed why."
    (setv lines (get self "lines")
          sources (len (sfor r lines (_source r)))
          text f";; {(len lines)} lines of {(get self "target")} from {sources} sources")
    (when self.followed
      (setv text (+ text " (followed; (:lines *1) holds them)")))
    (for [f (get self "failed")]
      (setv text (+ text f"\n;; failed: {(get f "source")}: {(get f "error")}")))
    text)

  (defn _render [self color timestamps]
    (setv lines (get self "lines")
          width (max (gfor r lines (len (_source r))) :default 0)
          body (lfor r lines (_line r width :color color :timestamps timestamps)))
    (.join "\n" [#* body (.summary self)]))

  (defn text [self]
    "Plain text with each line's time and source, for a file (what `(edit ...)` writes)."
    (+ (redact-text (._render self False True)) "\n"))

  (defn ansi [self]
    "The lines coloured by source with ANSI escapes, for a terminal."
    (redact-text (._render self True False)))

  (defn __repr__ [self]
    (redact-text (if self.followed (.summary self) (._render self False False)))))


;; --- finding the sources of a target ----------------------------------------------------------

(defn _api-of [node]
  (or (.get node "api")
      (when (.get node "addr") f"http://{(get node "addr")}:{_API-PORT}")))

(defn _plan [target]
  "Which nodes to ask, and with which query: [kind nodes params]. A node name means every
  container on it; a service name, the nodes its tasks ran on; anything else, a container."
  (try
    (setv nodes (call "GET" "/v1/nodes"))
    (except [e CloudError]
      ;; no manager answers: a node's own agent may still give that node's logs
      (setv recorded (lfor n (. (connection) record nodes) :if (= (.get n "name") target) n))
      (if recorded
        (return ["node" recorded {}])
        (raise))))
  (setv by-name (dfor n nodes (get n "name") n))
  (when (in target by-name)
    (return ["node" [(get by-name target)] {}]))
  (setv services (lfor s (call "GET" "/v1/services") (get s "name")))
  (when (in target services)
    (setv tasks (call "GET" f"/v1/services/{(url-quote target :safe "")}/tasks")
          names (sorted (sfor t tasks :if (.get t "node") (get t "node"))))
    (return ["service"
             (lfor n names (.get by-name n {"name" n "api" None}))
             {"service" target}]))
  ["container" nodes {"container" target "names" (+ (list by-name) services)}])

(defn _check-options [since tail grep]
  (import wire.records [parse-since])
  (parse-since since)   ; a bad `since` is refused here, before any node is asked
  (when (and (is-not tail None) (or (not (isinstance tail int)) (isinstance tail bool) (< tail 0)))
    (raise (ValueError f":tail {(hy.repr tail)}: give a whole number of lines (0 or more) per container")))
  (when (is-not grep None)
    (try
      (return (re.compile grep))
      (except [e re.error]
        (raise (ValueError f":grep {(hy.repr grep)} is not a regular expression: {e}") :from None))))
  None)


;; --- fetching, on the session's loop -----------------------------------------------------------

(defn :async _fetch-one [conn node params pattern out on-event read-timeout]
  "Stream one node's records into `out`; returns \"ok\", \"absent\" (no such container there)
  or \"failed\" (and names the failure in out's \"failed\")."
  (import wire.client [NodeApiError])
  (setv name (get node "name")
        api (_api-of node))
  (defn fail [source error]
    (setv f {"source" source "error" error})
    (.append (get out "failed") f)
    (when on-event (on-event f)))
  (when (not api)
    (fail name "the cloud knows no API address of this node (is it still in the cloud?)")
    (return "failed"))
  (try
    (setv client (await (.node conn api)))
    (for [:async rec (.stream-lines client "/v1/logs" :params params :timeout read-timeout)]
      (cond
        (in "error" rec)
          (fail f"{name} {(.get rec "container" "?")}" (get rec "error"))
        (or (is pattern None) (.search pattern (.get rec "line" "")))
          (do
            (.append (get out "lines") rec)
            (when on-event (on-event rec)))))
    (return "ok")
    (except [e NodeApiError]
      (when (= e.code "unknown-container")
        (.append (get out "hints") e.hint)
        (return "absent"))
      (fail name (+ e.message (if e.hint f" ({e.hint})" "")))
      (return "failed"))
    (except [e Exception]
      ;; an answer that is not what the protocol says must not sink the other nodes' lines
      (fail name f"unreadable answer ({(. (type e) __name__)}: {e})")
      (return "failed"))))

(defn :async _fetch-all [conn nodes params pattern out on-event read-timeout]
  (await (asyncio.gather #* (gfor n nodes
                                  (_fetch-one conn n params pattern out on-event read-timeout)))))

(defn _not-found [target names hints]
  "The error for a target that is no node, service or container, with the close names."
  (setv known (list names))
  (for [h hints]
    (for [prefix ["did you mean " "known: "]]
      (when (.startswith h prefix)
        (.extend known (.split (.rstrip (cut h (len prefix) None) "?") ", ")))))
  (setv close (difflib.get-close-matches target known :n 4 :cutoff 0.5))
  (LookupError
    (+ f"no node, service or container is named {(hy.repr target)}"
       (if close f": did you mean {(.join ", " close)}?" "; (nodes) and (services) list the names"))))

(defn _answer [target kind statuses out followed]
  (when (and (= kind "container") statuses (all (gfor s statuses (= s "absent"))))
    (raise (_not-found target (get out "names") (get out "hints"))))
  (setv lines (sorted (get out "lines") :key (fn [r] (_time-key (.get r "time")))))
  (LogResult target lines (get out "failed") :followed followed))

(defn _follow [target kind nodes params pattern names]
  "Print lines as they come until Ctrl-C (or every source ended); return what was seen."
  (setv session (current)
        conn (connection session)
        events (queue.Queue)
        out {"lines" (deque :maxlen _KEEP) "failed" [] "hints" [] "names" names}
        color (_use-color)
        width (max (gfor n nodes (+ (len (get n "name")) 12)) :default 20)
        statuses None
        future (asyncio.run-coroutine-threadsafe
                 (_fetch-all conn nodes params pattern out (fn [e] (.put events e)) None)
                 (. session loop)))
  (try
    (while True
      (try
        (setv event (.get events :timeout 0.2))
        (except [queue.Empty]
          (if (.done future) (break) (continue))))
      (if (in "error" event)
        (print f";; failed: {(get event "source")}: {(get event "error")}" :file sys.stderr :flush True)
        (print (redact-text (_line event width :color color)) :flush True)))
    (except [KeyboardInterrupt]
      (.cancel future)))
  (try
    (setv statuses (.result future :timeout 10))
    (except [[Exception asyncio.CancelledError concurrent.futures.CancelledError]]
      None))
  (setv (get out "lines") (list (get out "lines")))
  (_answer target kind statuses out True))


;; --- the ops ----------------------------------------------------------------------------------

(defn logs [target * [since None] [tail None] [grep None] [follow False]]
  "Log lines of a service, a node or a container, from every node concerned at once.

  (logs \"web\")                     every task of service web, on every node it ran on
  (logs \"node-2\")                  every container on node-2
  (logs \"web.1.abc…\")              one container, wherever it is
  (logs \"web\" :since \"10m\" :tail 200 :grep \"ERROR|WARN\")

  :since  a duration (30s, 10m, 2h, 1d), a Unix time or an RFC 3339 time
  :tail   the last N lines of each container
  :grep   a regular expression a line must contain (Python `re.search`)
  :follow keep printing new lines until Ctrl-C, like (tail! ...)

  Each line is prefixed with its node and container, like stern. A node that is down does not
  spoil the answer: you get the lines that could be had, and `;; failed:` names each source
  that failed and why. The answer is data: (:lines *1), (:failed *1); (edit *1) opens it."
  (setv pattern (_check-options since tail grep)
        [kind nodes params] (_plan target)
        names (.pop params "names" []))
  (.update params {"since" since "tail" tail "follow" (bool follow)})
  (when follow
    (return (_follow target kind nodes (_query params) pattern names)))
  (setv session (current)
        conn (connection session)
        out {"lines" [] "failed" [] "hints" [] "names" names}
        statuses (.run session (_fetch-all conn nodes (_query params) pattern out None
                                           _READ-TIMEOUT)))
  (_answer target kind statuses out False))

(defn _query [params]
  (dfor [k v] (.items params) :if (is-not v None) k v))

(defn tail! [target * [tail 10] [since None] [grep None]]
  "Follow the logs of a service, node or container as they come, until Ctrl-C.

  Starts with the last `:tail` lines of each container (10), then prints new lines as they
  arrive, each prefixed (and coloured on a terminal) by its node and container. Ctrl-C stops
  following and returns to the prompt; the answer holds the lines seen: (:lines *1)."
  (logs target :since since :tail tail :grep grep :follow True))

(defn _shell-for [node]
  "The Session and its SSH shell, with `node`'s address known (asked of the cloud once)."
  (import repl.ssh [node-shell])
  (setv session (current)
        shell (node-shell session))
  (when (not-in node shell.targets)
    (setv known (dfor n (call "GET" "/v1/nodes") (get n "name") n))
    (if (in node known)
      (.remember shell node (get (get known node) "addr"))
      (do
        (setv close (difflib.get-close-matches node (list known) :n 3 :cutoff 0.5))
        (raise (LookupError (+ f"no node named {(hy.repr node)}"
                               (if close f": did you mean {(.join ", " close)}?"
                                   f" (nodes: {(.join ", " known)})")))))))
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
  (setv session (current)
        conn (connection session)
        nodes (call "GET" "/v1/nodes")
        record (next (gfor n nodes :if (= (get n "name") node) n) None))
  (when (is record None)
    (raise (unknown-name "node" node (lfor n nodes (get n "name")))))
  (setv api (_api-of record))
  (when (is api None)
    (raise (CloudError f"{node} has no API address on record (its hyops.api label is missing)"
                       :hint "is its agent running? (nodes) shows its labels")))
  {"node" node "to" api "local" (.run session (.tunnel conn api))})

(defn tunnels []
  "The open SSH tunnels to agents: {\"to\" API-URL \"local\" LOCAL-URL} each."
  (.tunnels (connection)))

(defn edit [x * [name None] [line None]]
  "Write x to a file under the workspace's logs/ folder and open it in your editor; returns the path.

  x can be logs (written with each line's time and source), a path that (node-file ...) gave,
  a string, or any value (dicts and lists as JSON). The file name is stable (logs of web go to
  logs/web.log), mode 0600; :name \"incident-42\" chooses another, :line 120 jumps there.

  The editor is $HYOPS_EDITOR, else $VISUAL, else $EDITOR. emacsclient, VS Code (code),
  Sublime Text and Neovim inside Neovim ($NVIM) get the file without the console waiting; any
  other editor is a terminal editor and runs in the foreground until you quit it. With no
  editor set, the file is still written and its path returned."
  (setv logs-dir (. (current) workspace logs-dir))
  (when (and (isinstance x str) (.is-file (Path x))
             (.is-relative-to (.resolve (Path x)) (.resolve logs-dir)))
    (setv x (Path x)))
  (setv [path problem] (edit-value x logs-dir :name name :line line))
  (when problem
    (print f"edit: {problem}" :file sys.stderr))
  (str path))

