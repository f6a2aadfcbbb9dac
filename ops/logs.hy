"Logs from every node at once, and the operator's editor. docs/logs-and-ssh.md tells the story;
the plumbing (asking every node at once, merging, following) is repl/logs.py."

(import sys
        pathlib [Path]
        repl.editor [edit-value]
        repl.logs [LogResult read-logs follow-logs]
        repl.session [current])

(export :objects [logs tail! edit LogResult])


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
  (if follow
    (follow-logs target :since since :tail tail :grep grep)
    (read-logs target :since since :tail tail :grep grep)))

(defn tail! [target * [tail 10] [since None] [grep None]]
  "Follow the logs of a service, node or container as they come, until Ctrl-C.

  Starts with the last `:tail` lines of each container (10), then prints new lines as they
  arrive, each prefixed (and coloured on a terminal) by its node and container. Ctrl-C stops
  following and returns to the prompt; the answer holds the lines seen: (:lines *1)."
  (logs target :since since :tail tail :grep grep :follow True))

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
