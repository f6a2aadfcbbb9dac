"The console's own helpers: help, the list of ops, reloading ops/, the last traceback."

(import builtins
        traceback
        repl.session [current]
        sys
        repl.render [help-text redact-text render vocabulary-lines])

(setv _INTRO (.join "\n" [
  "hyops console: evaluate Hy forms in this workspace; results come back as data."
  "  (ops)          list every op, one line each"
  "  (help name)    the docstring of an op, function or macro"
  "  (pst)          the full traceback of the last error (*e holds the exception)"
  "  (reload!)      reload every ops/ module (saved files reload on their own)"
  "  *1 *2 *3       the last three results"
  "  (show-all *1)  print a long result whole (*print-length* *print-lines* limit the console)"
  "  -> ->> as-> doto some-> unless comment let+, get-in assoc dissoc: as in Clojure"]))

(defn _macro-named [module name]
  "The macro `name` would expand to in `module`, or None."
  (setv key (hy.mangle name))
  (or (.get (getattr module "_hy_macros" {}) key)
      (.get (getattr builtins "_hy_macros" {}) key)))

(defn _show-help [[name None] [thunk None] [macro None]]
  "Print the help page for a value (from `thunk`) or a macro; the (help) macro calls this."
  (cond
    (is name None) (print _INTRO)
    (is-not macro None) (print (help-text name macro :macro True))
    True (print (help-text name (thunk)))))

(defmacro help [_hy_compiler #* args]
  "Show what a function, macro or value is and does: (help nodes), (help when), (help *1)."
  (when (> (len args) 1)
    (raise (TypeError "help takes one name, e.g. (help nodes)")))
  (if (not args)
    `(hy.I.ops/core._show-help)
    (do
      (setv [target] args)
      (if (and (isinstance target hy.models.Symbol)
               (_macro-named _hy_compiler.module (str target)))
        `(hy.I.ops/core._show-help ~(str target)
           :macro (hy.I.ops/core._macro-named (hy.I.sys.modules.get ~_hy_compiler.module.__name__) ~(str target)))
        `(hy.I.ops/core._show-help ~(if (isinstance target hy.models.Symbol) (str target) (hy.repr target))
           (fn [] ~target))))))

(defn ops []
  "List the workspace's vocabulary: every op with the first line of its docstring."
  (print (vocabulary-lines (.vocabulary (current)))))

(defn reload! []
  "Reload every ops/ module from disk and re-require its macros; returns the modules reloaded."
  (.reload (current)))

(defn pst [[e None]]
  "Print the full traceback of the last error (or of the exception `e`)."
  (setv error (or e (. (current) last-error)))
  (cond
    (is error None) (print "no error yet")
    True (do
      (setv original (if (and (is e None) (. error original)) (. error original) error))
      (if (isinstance original hy.errors.HyLanguageError)
        ;; Hy's own rendering (file, line, the form with a caret) says more than its compiler's frames.
        (print (redact-text (.rstrip (.join "" (traceback.format-exception-only original)))))
        (print (redact-text (.rstrip (.join "" (traceback.format-exception original)))))))))

(defn nrepl! [* [port 0] [host "127.0.0.1"]]
  "Serve this console's session to your editor over nREPL; returns the server.

  The editor and the console then share definitions, *1-style history aside (each editor
  session has its own *1 *2 *3 *e), and the connection to the cloud. Loopback only; the port
  goes to .nrepl-port, where CIDER, Calva and Conjure look for it. (.stop *1) stops serving.
  :port 7888 picks the port (default: any free one)."
  (import repl.nrepl [serve])
  (serve (current) :port port :host host))

(defn get-in [m ks [default None]]
  "The value at the path of keys `ks` in nested maps and lists, or `default`, as Clojure's get-in.

  (get-in (status) [\"services\" 0 \"name\"]) - a missing key or index anywhere gives `default`."
  (setv value m)
  (for [k ks]
    (try
      (setv value (get value k))
      (except [[KeyError IndexError TypeError]]
        (return default))))
  value)

(defn assoc [m #* kvs]
  "A copy of the map `m` with each key set to the value after it, as Clojure's assoc: m is untouched.

  (assoc node \"role\" \"manager\")"
  (when (% (len kvs) 2)
    (raise (TypeError "assoc takes keys and values in pairs: (assoc m k v k2 v2)")))
  (setv new (dict m))
  (for [i (range 0 (len kvs) 2)]
    (setv (get new (get kvs i)) (get kvs (+ i 1))))
  new)

(defn dissoc [m #* ks]
  "A copy of the map `m` without the keys `ks`, as Clojure's dissoc: m is untouched."
  (dfor [k v] (.items m) :if (not-in k ks) k v))

(defn show-all [x]
  "Print x whole, with every item and line the console left out of a long result: (show-all *1).

  After a result that ends in a ;; … line (the console's *print-length* and *print-lines*).

  The console prints at most *print-length* items of a collection (100) and *print-lines* lines
  of a result (200); (setv *print-length* None) or (setv *print-lines* None) lifts a limit."
  (import shutil)
  (setv ansi (getattr x "ansi" None))
  (print (if (and (callable ansi) (.isatty sys.stdout))
           (redact-text (ansi))
           (render x :width (. (shutil.get-terminal-size) columns)))))
