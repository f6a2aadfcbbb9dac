"Runbooks: notebooks/*.hy run step by step with a report (docs/runbooks.md).

  (run-notebook \"tour\")                               run one from the console
  (run-notebook \"rolling-restart\" :system \"web\" :dry-run True)
  (defparams name default \"doc\" ...)                  a runbook's parameters
  (wait-for \"web healthy\" (fn [] ...) :timeout 120)   poll until true, with a deadline"

(import time
        repl.cloud [CloudError]
        repl.runbook [run-notebook :as _run-notebook dry-run-now])

(export :objects [run-notebook wait-for dry-run?] :macros [defparams])


(defmacro defparams [#* items]
  "Declare a runbook's parameters once, before its first step: name, default, docstring.

    (defparams
      system None \"the system to restart; None: every system\"
      timeout 120 \"seconds to wait for it to be healthy again\")

  The type is the default's: a whole number, a number, True/False, or text (also for None).
  `hyops run` binds each name to its --param value (checked) and skips this form; evaluated
  anywhere else (the console, hyops eval -f) it binds the defaults."
  (when (% (len items) 3)
    (raise (ValueError "defparams takes triples: name default \"docstring\"")))
  `(do (setv ~@(lfor [i x] (enumerate items) :if (< (% i 3) 2) x)) None))

(defn run-notebook [name * [dry-run False] [yes False] #** params]
  "Run the runbook notebooks/NAME.hy now, step by step, and leave its report under reports/.

  Keyword arguments set its parameters (see hyops notebooks); :dry-run True makes every change
  return its plan; :yes True makes changes without asking. Returns the run's status and report
  path; a failing step raises, naming the step and the report.
    (run-notebook \"tour\")
    (run-notebook \"rolling-restart\" :system \"web\" :dry-run True)"
  (_run-notebook name :dry-run dry-run :yes yes #** params))

(defn dry-run? []
  "True while a runbook started with --dry-run is running: wait for nothing that did not change."
  (dry-run-now))

(defn wait-for [what check * [timeout 120] [every 1]]
  "Call (check) until it returns something true, at most `timeout` seconds; return that value.

  The cloud not answering for a moment counts as not yet. After the deadline it raises
  TimeoutError naming `what` and the last answer or error, so a runbook stops there.
    (wait-for \"node-2 ready\" (fn [] (= (:state (node \"node-2\")) \"ready\")) :timeout 60)"
  (setv deadline (+ (time.monotonic) timeout)
        last None)
  (while True
    (try
      (setv value (check))
      (when value (return value))
      (setv last f"last answer {(hy.repr value)}")
      (except [e CloudError]
        (setv last f"last error {e}")))
    (when (> (time.monotonic) deadline)
      (raise (TimeoutError f"gave up waiting for {what} after {timeout} s ({last})")))
    (time.sleep every)))
